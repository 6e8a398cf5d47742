"""A hand-aware model behind the real FastAPI app (in-process, no Ray): /predict's hand block, the
no-hand rule, /v1/model, and the demo's skeleton overlay and frame smoothing."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from asl_platform.config import ServeConfig
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.demo import Speller, build_demo
from conftest import ASL_ALPHABET, colour_image, detected_photos

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def client(hand_model) -> TestClient:
    return TestClient(create_app(LocalBackend(hand_model), ServeConfig(max_request_bytes=1 << 20)))


@pytest.fixture(scope="module")
def photos(asl_alphabet) -> dict[str, list]:
    return detected_photos(asl_alphabet, ["A", "B", "C"], per_class=2, scan=60, skip=12)  # not trained on


def test_predict_returns_the_hand_block_and_reads_the_hand(client, photos):
    for label, pairs in photos.items():
        path, hand = pairs[0]
        response = client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        body = response.json()
        block = body["hand"]
        assert block["found"] is True and block["handedness"] in ("Left", "Right") and 0.5 <= block["score"] <= 1
        assert len(block["landmarks"]) == 21 and all(len(p) == 3 for p in block["landmarks"])
        np.testing.assert_allclose(block["box"], hand.box, atol=0.2)  # what training's detector saw
        # The landmark model answers (a red-green-blue colour model would call every photo "space").
        assert body["label"] == label, body["top_k"]


def test_the_hand_block_is_in_the_pixels_of_a_large_upload(client, photos):
    """A phone-sized JPEG decodes at reduced scale for the detector: the block still names the
    upload's own pixels, and the hand reads the same."""
    path, hand = photos["B"][0]
    big = io.BytesIO()
    Image.open(path).convert("RGB").resize((2000, 1600), Image.BICUBIC).save(big, "JPEG", quality=92)
    body = client.post("/predict", content=big.getvalue(), headers={"content-type": "image/jpeg"}).json()
    block = body["hand"]
    assert block["found"] and body["label"] == "B"
    expected = np.asarray(hand.box) * [10, 8, 10, 8]  # 200x200 -> 2000x1600
    np.testing.assert_allclose(block["box"], expected, atol=40)
    scaled = np.asarray(block["landmarks"])[:, :2] / [10, 8]  # back to the 200x200 photo's pixels
    assert np.median(np.abs(scaled - hand.landmarks[:, :2])) < 4


def test_without_a_hand_the_image_model_answers_and_says_so(client):
    body = client.post("/predict", content=colour_image("B", size=200), headers={"content-type": "image/png"}).json()
    assert body["hand"] == {"found": False, "handedness": None, "score": None, "box": None, "landmarks": None}
    assert body["label"] == "B"  # rule landmarks|image: the colour model's answer


def test_the_model_description_names_the_fusion_rule(client):
    info = client.get("/v1/model").json()
    assert info["kind"] == "hand_aware" and info["fusion"]["rule"] == "landmarks|image"


def test_an_image_model_answers_with_no_hand_block(colour_model):
    client = TestClient(create_app(LocalBackend(colour_model), ServeConfig()))
    body = client.post("/predict", content=colour_image("A"), headers={"content-type": "image/png"}).json()
    assert body["label"] == "A" and body["hand"] is None


def test_the_demo_draws_the_skeleton_over_the_photo_and_the_frames(hand_model, photos, tmp_path):
    demo = build_demo(LocalBackend(hand_model), ServeConfig(spell_hold_s=30))
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    path, hand = photos["C"][0]
    letters, drawn = asyncio.run(handlers["on_photo"](str(path)))
    assert next(iter(letters)) == "C"
    original = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    changed = np.any(np.asarray(drawn, dtype=np.int16) != original, axis=2)
    x0, y0, x1, y1 = (int(v) for v in hand.box)
    assert changed.mean() > 0.01 and changed[y0:y1 + 1, x0:x1 + 1].any()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    letters, drawn = asyncio.run(handlers["on_photo"](str(blank)))
    assert np.array_equal(np.asarray(drawn), np.full((200, 200, 3), 128, np.uint8))  # nothing drawn, nothing found
    text, status, speller, frame = asyncio.run(handlers["on_frame"](str(path), Speller.of(ServeConfig())))
    assert status.startswith("**C**") and frame is not None
    text, status, speller, frame = asyncio.run(handlers["on_frame"](str(blank), speller))
    assert "no hand found" in status


def test_fingerspelling_smooths_over_the_last_frames():
    speller = Speller(hold_s=1.0, min_probability=0.6, window=3)
    assert speller.smooth({"A": 0.9, "B": 0.1}) == ("A", pytest.approx(0.9))
    assert speller.smooth({"A": 0.8, "B": 0.2})[0] == "A"
    label, probability = speller.smooth({"B": 0.7, "A": 0.3})  # one odd frame does not flip the answer
    assert label == "A" and probability == pytest.approx((0.9 + 0.8 + 0.3) / 3)
    speller.smooth({"B": 0.9})
    assert speller.smooth({"B": 0.9})[0] == "B" and len(speller.recent) == 3
    speller.clear()
    assert speller.recent == []
