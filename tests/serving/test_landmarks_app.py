"""POST /v1/landmarks on a hand-aware model behind the real FastAPI app (in-process, no Ray): the hand
block /predict answers with, sent back as landmarks, gets the landmark model's own answer on the same
photo; a profile calibrates it like /predict; no hand is 'nothing'; malformed bodies (wrong length, NaN,
huge numbers, unknown fields, not JSON) are 400s; an image-only model has no such route."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.datasets import detected_photos
from helpers.models import HAND_LETTERS
from fastapi.testclient import TestClient

from asl_platform.config import ServeConfig
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def backend(hand_model) -> LocalBackend:
    return LocalBackend(hand_model)


@pytest.fixture(scope="module")
def client(backend) -> TestClient:
    return TestClient(create_app(backend, ServeConfig(max_request_bytes=1 << 20, demo=False)))


@pytest.fixture(scope="module")
def hands(asl_alphabet, client) -> list[tuple[str, dict]]:
    """(letter, /predict's answer) for photos the fixture model was not trained on."""
    photos = detected_photos(asl_alphabet, HAND_LETTERS, per_class=3, scan=60, skip=12)
    return [(letter, client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"}).json())
            for letter, pairs in photos.items() for path, _ in pairs]


def _post(client: TestClient, body, **params):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/v1/landmarks", content=data, params=params, headers={"content-type": "application/json"})


def test_the_landmarks_of_a_photo_get_the_landmark_model_answer(client, backend, hands):
    predictor = backend.classifier.predictor
    agree = 0
    for letter, answer in hands:
        hand = answer["hand"]
        response = _post(client, {"landmarks": hand["landmarks"], "handedness": hand["handedness"]}, top_k=3)
        assert response.status_code == 200, response.text
        body = response.json()
        points = np.asarray(hand["landmarks"], np.float32)
        row = np.append(points.reshape(-1), 1.0 if hand["handedness"] == "Right" else 0.0)[None].astype(np.float32)
        expected = predictor.predict_landmarks(row)[0]
        assert body["label"] == predictor.classes[int(expected.argmax())]
        assert body["probability"] == pytest.approx(float(expected.max()), abs=1e-4)
        assert len(body["top_k"]) == 3 and body["calibrated"] is False and isinstance(body["confident"], bool)
        assert body["hand"]["found"] and body["hand"]["landmarks"] == hand["landmarks"]
        assert body["model"] == answer["model"]
        agree += body["label"] == answer["label"]
    assert agree >= len(hands) - 2, f"/v1/landmarks and /predict agree on {agree} of {len(hands)} photos"


def test_no_hand_is_nothing_where_the_model_has_it(client, hand_model, tmp_path):
    """The fixture model's classes have no 'nothing': a body without a hand is refused, and its schema says
    so; the same model with a 'nothing' class answers it (what every ASL alphabet model has)."""
    refused = _post(client, {"landmarks": None, "handedness": "Right"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_landmarks"
    schema = client.get("/openapi.json").json()["paths"]["/v1/landmarks"]["post"]["requestBody"]
    assert {"type": "null"} not in [{"type": s.get("type")} for s in
                                    schema["content"]["application/json"]["schema"]["properties"]["landmarks"]["anyOf"]]
    backend = LocalBackend(hand_model)
    backend.info = {**backend.info, "classes": [*backend.info["classes"][:-1], "nothing"]}  # the last one renamed
    with_nothing = TestClient(create_app(backend, ServeConfig(demo=False)))
    body = with_nothing.post("/v1/landmarks", json={"landmarks": None, "handedness": "Right"}).json()
    assert body["label"] == "nothing" and body["probability"] == 1 and body["hand"]["found"] is False, body


def test_a_profile_calibrates_the_landmark_answer(client, hands):
    rows: dict[str, list] = {}
    for letter, answer in hands:
        hand = answer["hand"]
        rows.setdefault(letter, []).append([v for p in hand["landmarks"] for v in p]
                                           + [1 if hand["handedness"] == "Right" else 0])
    info = client.get("/v1/model").json()
    profile = {"format": "asl-platform calibration profile", "format_version": 1,
               "model": {"name": info["name"], "version": info["version"], "sha256": info["sha256"]}, "shots": rows}
    letter, answer = hands[0]
    hand = answer["hand"]
    body = _post(client, {"landmarks": hand["landmarks"], "handedness": hand["handedness"], "profile": profile}).json()
    assert body["calibrated"] is True and body["label"] == letter, body  # its own shot is the nearest
    refused = _post(client, {"landmarks": hand["landmarks"], "handedness": "Left", "profile": {"format": "x"}})
    assert refused.status_code == 422, refused.text


@pytest.mark.parametrize("body, status, code", [
    ({"landmarks": [[1.0, 2.0, 0.0]] * 20, "handedness": "Right"}, 400, "invalid_landmarks"),
    ({"landmarks": [[1.0, 2.0]] * 21, "handedness": "Right"}, 400, "invalid_landmarks"),
    ('{"landmarks": [' + ", ".join(["[NaN, 1, 0]"] * 21) + '], "handedness": "Right"}', 400, "invalid_landmarks"),
    ('{"landmarks": [' + ", ".join(["[Infinity, 1, 0]"] * 21) + '], "handedness": "Right"}', 400, "invalid_landmarks"),
    ({"landmarks": [[1e300, 1.0, 0.0]] * 21, "handedness": "Right"}, 400, "invalid_landmarks"),
    ({"landmarks": [["1", 1.0, 0.0]] * 21, "handedness": "Right"}, 400, "invalid_landmarks"),
    ({"landmarks": [[1.0, 1.0, 0.0]] * 21, "handedness": "Up"}, 400, "invalid_request"),
    ({"landmarks": [[1.0, 1.0, 0.0]] * 21}, 400, "invalid_request"),
    ({"handedness": "Right"}, 400, "invalid_request"),
    ({"landmarks": None, "handedness": "Right", "image": "x"}, 400, "invalid_request"),
    ([1, 2], 400, "invalid_request"),
    ("{not json", 400, "invalid_json"),
])
def test_malformed_bodies_are_400s(client, body, status, code):
    response = _post(client, body)
    assert response.status_code == status and response.json()["error"]["code"] == code, response.text


def test_extreme_but_valid_hands_get_a_finite_answer(client):
    """Every body the schema admits is answered: a hand of one point, or one a million pixels wide."""
    rng = np.random.default_rng(0)
    for points in (np.zeros((21, 3)), np.full((21, 3), 1e6), rng.uniform(-1e6, 1e6, (21, 3)),
                   rng.uniform(0, 1e-3, (21, 3))):
        response = _post(client, {"landmarks": points.tolist(), "handedness": "Left"})
        assert response.status_code == 200, response.text
        assert 0 <= response.json()["probability"] <= 1


def test_wrong_media_type_and_image_only_models(client, colour_model):
    response = client.post("/v1/landmarks", content=b"x", headers={"content-type": "image/jpeg"})
    assert response.status_code == 415
    colour = TestClient(create_app(LocalBackend(colour_model), ServeConfig(demo=False)))
    assert colour.post("/v1/landmarks", json={"landmarks": None, "handedness": "Right"}).status_code == 404
    assert "/v1/landmarks" not in colour.get("/openapi.json").json()["paths"]
    assert "/v1/landmarks" in client.get("/openapi.json").json()["paths"]
