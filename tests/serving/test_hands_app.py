"""A hand-aware model behind the real FastAPI app (in-process, no Ray): /predict's hand block, the
no-hand rule, /v1/model, the demo's skeleton overlay and frame smoothing; and personal calibration
over HTTP: POST /v1/calibration makes a profile from labelled photos, /predict and /v1/practice/check
answer with it, every bad profile is refused with a clear 4xx; the honest "not sure" in practice."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.datasets import detected_photos
from helpers.models import colour_image
from helpers.serving import shown
from PIL import Image

from asl_platform.config import ServeConfig
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.demo import build_demo
from asl_platform.serving.sessions import Speller
from asl_platform.serving.practice import NOT_SURE, check

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def client(hand_model) -> TestClient:
    return TestClient(create_app(LocalBackend(hand_model), ServeConfig(max_request_bytes=1 << 20)))


@pytest.fixture(scope="module")
def photos(asl_alphabet) -> dict[str, list]:
    return detected_photos(asl_alphabet, ["A", "B", "C"], per_class=3, scan=60, skip=12)  # not trained on


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
    answer = shown(asyncio.run(handlers["on_photo"](str(path), None)))
    letters, drawn = answer["letters"], answer["hand-overlay"]
    assert next(iter(letters)) == "C"
    original = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    changed = np.any(np.asarray(drawn, dtype=np.int16) != original, axis=2)
    x0, y0, x1, y1 = (int(v) for v in hand.box)
    assert changed.mean() > 0.01 and changed[y0:y1 + 1, x0:x1 + 1].any()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    drawn = shown(asyncio.run(handlers["on_photo"](str(blank), None)))["hand-overlay"]
    assert np.array_equal(np.asarray(drawn), np.full((200, 200, 3), 128, np.uint8))  # nothing drawn, nothing found
    answer = shown(asyncio.run(handlers["on_frame"](str(path), Speller.of(ServeConfig()), None)))
    assert answer["spell-status"].startswith("**C**") and answer["frame-overlay"] is not None
    answer = shown(asyncio.run(handlers["on_frame"](str(blank), answer["Speller"], None)))
    assert "no hand found" in answer["spell-status"]


def test_the_calibrate_tab_takes_webcam_frames_or_hands_found_in_the_page(hand_model, photos, monkeypatch):
    """The live view sends each frame's hand (no image): its landmarks are the shots, then the hand is lowered
    and a check hold of each letter measures the profile through the landmark model; the fallback sends frames
    and follows the same rules. Both give a profile of the same letters, with the before/after on the checks."""

    from asl_platform.serving import sessions
    from asl_platform.serving.backends import Prediction

    for name in ("CALIBRATION_READY_S", "CALIBRATION_GAP_S", "CALIBRATION_HOLD_S"):  # no waiting in a unit test
        monkeypatch.setattr(sessions, name, 0.0)
    info = LocalBackend(hand_model).info
    handlers = {fn.name: fn.fn for fn in build_demo(LocalBackend(hand_model), ServeConfig()).fns.values()}
    letters = ["A", "B"]
    # per letter: three shots, the hand lowered (none), then a check from a photo that is not a shot
    frames = [(letter, photos[letter][i][0], photos[letter][i][1]) for letter in letters for i in (0, 1, 0)]
    frames = [item for letter in letters for item in
              ([f for f in frames if f[0] == letter] + [(letter, None, None), (letter, photos[letter][2][0], photos[letter][2][1])])]

    session = sessions.Calibrating(letters, info)
    for seq, (letter, _, hand) in enumerate(frames, start=1):
        points = {"landmarks": hand.landmarks.tolist(), "handedness": hand.handedness} if hand else {"landmarks": None, "handedness": "Right"}
        answer = shown(asyncio.run(handlers["on_calibrate_hand"](json.dumps({"seq": seq, **points}), session, None,
                                                                  False)))
        assert answer["calibrate-live-seq"] == f"{seq}"
    profile, report, document = answer["Profile"], answer["calibrate-report"], answer["profile-json"]  # the last
    assert session.target is None  # both letters done: the profile was made
    assert all(data is None for take in session.takes.values() for data, _ in take.shots)  # hands only, no image
    assert {letter: len(rows) for letter, rows in document["shots"].items()} == {"A": 3, "B": 3}
    first = np.asarray(document["shots"]["A"][0][:63]).reshape(21, 3)
    assert np.allclose(first, photos["A"][0][1].landmarks, atol=0.01)  # the page's landmarks are the shot
    assert "2 letter(s) (A, B)" in report and "On your check of each letter (2 frames)" in report
    assert profile.document is document

    session = sessions.Calibrating(letters, info)  # the fallback: the frames themselves
    for letter, path, _ in frames:
        if path is None:  # the hand lowered: a frame without a hand
            session.offer(b"", Prediction(np.full(len(info["classes"]), 1 / len(info["classes"])), {"found": False}),
                          time.monotonic())
            continue
        answer = shown(asyncio.run(handlers["on_calibrate_frame"](str(path), session, None, False)))
        assert answer["calibrate-overlay"] is not None  # the hand drawn over the frame
    report, document = answer["calibrate-report"], answer["profile-json"]
    assert session.target is None and all(isinstance(data, bytes) for take in session.takes.values()
                                          for data, _ in take.shots)
    assert {letter: len(rows) for letter, rows in document["shots"].items()} == {"A": 3, "B": 3}
    assert "On your check of each letter (2 frames)" in report

    skipped = asyncio.run(handlers["on_calibrate_hand"]("not json", sessions.Calibrating(letters, info), None, False))
    assert skipped == {}  # a malformed message changes nothing


def test_fingerspelling_smooths_over_the_last_frames():
    speller = Speller(hold_s=1.0, window=3)
    assert speller.smooth({"A": 0.9, "B": 0.1}) == ("A", pytest.approx(0.9))
    assert speller.smooth({"A": 0.8, "B": 0.2})[0] == "A"
    label, probability = speller.smooth({"B": 0.7, "A": 0.3})  # one odd frame does not flip the answer
    assert label == "A" and probability == pytest.approx((0.9 + 0.8 + 0.3) / 3)
    speller.smooth({"B": 0.9})
    assert speller.smooth({"B": 0.9})[0] == "B" and len(speller.recent) == 3
    speller.clear()
    assert speller.recent == []


# --------------------------------------------------------------------------- calibration


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def calibrated(client, photos) -> dict:
    images = [{"letter": letter, "image": b64(path)} for letter, pairs in photos.items() for path, _ in pairs[:2]]
    images.append({"letter": "A", "image": base64.b64encode(colour_image("A", size=120)).decode()})  # no hand in it
    response = client.post("/v1/calibration", json={"images": images})
    assert response.status_code == 200, response.text
    return response.json()


def test_calibration_makes_a_profile_of_the_shots_and_says_how_much_it_helps(calibrated):
    profile = calibrated["profile"]
    assert calibrated["adopted"] is True and calibrated["why"] == ""
    assert profile["model"]["name"] == "hands" and profile["model"]["sha256"]
    assert {letter: len(rows) for letter, rows in profile["shots"].items()} == {"A": 2, "B": 2, "C": 2}
    assert all(len(row) == 64 for rows in profile["shots"].values() for row in rows)
    assert calibrated["letters"]["A"]["images"] == 3 and calibrated["letters"]["A"]["shots"] == 2
    assert calibrated["letters"]["A"]["unusable"] == 1  # the colour patch has no hand
    assert all(record["used"] for record in calibrated["letters"].values())
    held = calibrated["held_out"]  # each shot in turn kept out of the profile
    assert held["images"] == 6 and held["on"] == "shots" and held["accuracy_after"] >= held["accuracy_before"]


def test_a_letter_sent_more_often_than_a_profile_keeps_reports_the_shots_kept(client, photos):
    from asl_platform.model.calibration import MAX_SHOTS_PER_LETTER

    shots = [{"letter": "A", "image": b64(photos["A"][0][0])}] * (MAX_SHOTS_PER_LETTER + 2)
    made = client.post("/v1/calibration", json={"images": shots}).json()
    assert len(made["profile"]["shots"]["A"]) == MAX_SHOTS_PER_LETTER
    assert made["letters"]["A"]["images"] == MAX_SHOTS_PER_LETTER + 2
    assert made["letters"]["A"]["shots"] == MAX_SHOTS_PER_LETTER and made["letters"]["A"]["unusable"] == 0


def test_predict_answers_from_the_profile_sent_as_json_or_multipart(client, calibrated, photos):
    path, _ = photos["C"][2]  # not one of the shots
    plain = client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"}).json()
    assert plain["calibrated"] is False and isinstance(plain["confident"], bool)
    body = client.post("/predict", json={"image": b64(path), "profile": calibrated["profile"]}).json()
    assert body["calibrated"] is True and body["label"] == "C", body
    form = client.post("/predict", files={"file": ("c.jpg", path.read_bytes(), "image/jpeg")},
                       data={"profile": json.dumps(calibrated["profile"])}).json()
    assert form["calibrated"] is True and form["top_k"] == body["top_k"]
    batch = client.post("/predict/batch", json={"images": [b64(path), base64.b64encode(colour_image("B")).decode()],
                                                "profile": calibrated["profile"]}).json()
    assert [r["calibrated"] for r in batch["results"]] == [True, False]  # no hand in the second: the model answers


def test_a_profile_whose_shots_are_another_letter_does_not_make_that_letters_photos_worse(client, photos, asl_alphabet):
    """Shots of 'A' that are all B hands (a learner who signs the wrong letter, or a look-alike): the model's
    B photos are answered no worse with the profile than without it."""
    b = [path for path, _ in detected_photos(asl_alphabet, ["B"], per_class=6, scan=80, skip=12)["B"]]
    shots = [{"letter": "A", "image": b64(path)} for path in b[:2]]  # A's shots: B hands
    shots += [{"letter": "B", "image": b64(path)} for path in b[2:4]]
    shots += [{"letter": "C", "image": b64(path)} for path, _ in photos["C"][:2]]
    made = client.post("/v1/calibration", json={"images": shots}).json()
    photos_of_b = [b64(path) for path in b[4:]]
    plain = client.post("/predict/batch", json={"images": photos_of_b}).json()["results"]
    with_profile = client.post("/predict/batch", json={"images": photos_of_b, "profile": made["profile"]}).json()["results"] \
        if made["profile"] else plain
    assert sum(r["label"] == "B" for r in with_profile) >= sum(r["label"] == "B" for r in plain)
    assert all(r["label"] != "A" for r in with_profile)  # no B photo became an A


@pytest.mark.parametrize("change,status,code", [
    (lambda p: {**p, "shots": {"A": [[1.0] * 10]}}, 422, "invalid_profile"),
    (lambda p: {**p, "model": {**p["model"], "sha256": "0" * 16}}, 422, "profile_model_mismatch"),
    (lambda p: {**p, "shots": {"A": p["shots"]["A"] * 6}}, 413, "profile_too_large"),
    (lambda p: {**p, "shots": {"Q": p["shots"]["A"]}}, 422, "invalid_profile"),
    (lambda p: "a string", 422, "invalid_profile"),
])
def test_every_bad_profile_is_a_clear_4xx(client, calibrated, photos, change, status, code):
    body = {"image": b64(photos["A"][0][0]), "profile": change(calibrated["profile"])}
    response = client.post("/predict", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code, response.text
    assert "profile" in response.json()["error"]["message"] or "calibrat" in response.json()["error"]["message"]


def test_a_profile_field_that_is_not_json_is_400(client, photos):
    response = client.post("/predict", files={"file": ("a.jpg", photos["A"][0][0].read_bytes(), "image/jpeg")},
                           data={"profile": "{not json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("body,status", [
    ({"images": []}, 400),
    ({"images": [{"letter": "Q", "image": "aGVsbG8="}]}, 422),
    ({"images": [{"letter": "A"}]}, 400),
    ({"images": [{"letter": "A", "image": "aGVsbG8=", "note": 1}]}, 400),
    ({"pictures": []}, 400),
])
def test_calibration_requests_are_checked(client, body, status):
    assert client.post("/v1/calibration", json=body).status_code == status
    assert client.post("/v1/calibration", content=b"\xff\xd8", headers={"content-type": "image/jpeg"}).status_code == 415


def test_an_image_model_has_no_calibration_and_refuses_a_profile(colour_model, calibrated):
    client = TestClient(create_app(LocalBackend(colour_model), ServeConfig()))
    assert client.post("/v1/calibration", json={"images": []}).status_code in (404, 405)
    assert "/v1/calibration" not in client.get("/openapi.json").json()["paths"]
    response = client.post("/predict", json={"image": base64.b64encode(colour_image("A")).decode(),
                                             "profile": calibrated["profile"]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "calibration_unsupported"


def test_practice_check_uses_the_profile_and_never_passes_an_unsure_answer(client, calibrated, photos):
    path = photos["B"][2][0]
    verdict = client.post("/v1/practice/check?target=B", json={"image": b64(path), "profile": calibrated["profile"]}).json()
    assert verdict["calibrated"] is True and verdict["label"] == "B"
    assert verdict["correct"] == verdict["confident"]  # right letter: correct exactly when sure
    unsure = check("B", 0.95, False, {"found": True, "landmarks": [[0.0, 0.0, 0.0]] * 21, "handedness": "Right"},
                   "B", {})
    assert unsure["correct"] is False and unsure["confident"] is False and unsure["hints"][0] == NOT_SURE
    sure = check("B", 0.95, True, None, "B", {})
    assert sure["correct"] is True and sure["confident"] is True


def test_the_schema_documents_the_profile_and_the_calibration_route(client, photos):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    profile, no_profile = body["properties"]["profile"]["anyOf"]
    assert profile["properties"]["model"]["properties"]["sha256"]["const"] and no_profile == {
        "type": "null", "description": "no profile"}
    assert client.post("/predict", json={"image": b64(photos["A"][0][0]), "profile": None}).json()["calibrated"] is False
    route = schema["paths"]["/v1/calibration"]["post"]
    assert set(route["responses"]) >= {"200", "400", "413", "415", "422"}


def test_every_route_says_confident_by_the_one_rule_for_the_answer_it_gives(hand_model, photos, calibrated):
    """Thresholds set apart (the photo one just under this photo's answer, the live and calibrated ones above
    it): /predict, /predict/batch and practice check (photos) are confident, /v1/landmarks and the live tabs are
    not, nor a calibrated answer; the practice catalogue and every route agree with ``confidence_threshold``."""
    from asl_platform.model.confidence import ANSWER_THRESHOLDS
    from asl_platform.serving.backends import confidence_threshold
    from asl_platform.serving.tabs.frames import Frame
    from asl_platform.serving.tabs.practice import practice_step
    from asl_platform.serving.tabs.spelling import spell_step
    from asl_platform.serving.practice import Practice

    backend = LocalBackend(hand_model)
    path, hand = photos["A"][0]
    (answer,) = asyncio.run(backend.classify([path.read_bytes()]))
    probability = float(answer.probabilities.max())
    backend.info["confidence"] = {**(backend.info["confidence"] or {}), "threshold": probability - 0.01,
                                  "live_threshold": min(1.0, probability + 0.01), "calibrated_threshold": 1.0}
    info = backend.info
    client = TestClient(create_app(backend, ServeConfig()))
    photo = client.post("/predict", json={"image": b64(path)}).json()
    batch = client.post("/predict/batch", json={"images": [b64(path)]}).json()["results"][0]
    practised = client.post("/v1/practice/check?target=A", json={"image": b64(path)}).json()
    landmarks = client.post("/v1/landmarks", json={"landmarks": hand.landmarks.tolist(),
                                                   "handedness": hand.handedness}).json()
    with_profile = client.post("/predict", json={"image": b64(path), "profile": calibrated["profile"]}).json()
    assert photo["confident"] and batch["confident"] and practised["confident"]
    assert not landmarks["confident"] and landmarks["probability"] < confidence_threshold(info, "live")
    assert with_profile["calibrated"] and not with_profile["confident"]
    catalogue = client.get("/v1/practice/letters").json()["thresholds"]
    assert catalogue == {answer: confidence_threshold(info, answer) for answer in ANSWER_THRESHOLDS}

    (live,) = asyncio.run(backend.classify_landmarks([np.asarray(hand_row_of(hand), np.float32)]))
    frame = Frame({"A": float(live.probabilities.max())}, live)
    speller = Speller(hold_s=0.0)
    assert "Not sure" in spell_step(speller, frame, ServeConfig(spell_hold_s=0.001), info) and speller.text == ""
    settings = ServeConfig(spell_hold_s=0.001)
    practice = Practice(["A", "B"])
    practice.start("word", time.monotonic(), word="A")
    feedbacks = [practice_step(practice, frame, settings, info, {}) for _ in range(2) if not time.sleep(0.01)]
    assert not any(done for done, _ in feedbacks) and "too unsure" in feedbacks[-1][1]
    sure_frame = Frame({"A": probability}, answer)  # the photo answer: confident, and practice passes it
    assert any(practice_step(practice, sure_frame, settings, info, {})[0] for _ in range(3) if not time.sleep(0.01))


def hand_row_of(hand) -> list[float]:
    from asl_platform.model.calibration import hand_row

    return hand_row({"landmarks": hand.landmarks.tolist(), "handedness": hand.handedness})


def test_the_demo_of_a_hand_aware_model_has_every_tab_and_their_live_views(hand_model):
    """Photo, Calibrate, Fingerspelling and Practice, each live tab with its in-page view (start button, status,
    the answer over the video) wired to its handler; an image-only model has no Calibrate tab (test_demo.py)."""
    demo = build_demo(LocalBackend(hand_model), ServeConfig())
    config = demo.get_config_file()
    tabs = [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]
    assert tabs == ["Photo", "Calibrate", "Fingerspelling", "Practice"]
    html = " ".join(str(c["props"].get("value", "")) for c in config["components"] if c["type"] == "html")
    for name in ("calibrate", "spell", "practice"):
        for part in ("live-start", "live-status", "live-answer"):
            assert f'id="{name}-{part}"' in html, (name, part)
    handlers = {fn.name for fn in demo.fns.values()}
    assert {"on_calibrate_hand", "on_hand", "on_practice_hand", "on_calibrate_keep", "on_calibrate_redo"} <= handlers


def test_practice_draws_the_target_and_the_learners_own_hand_with_the_finger_to_move(hand_model, photos):
    """A B hand found in the page while the target is A: the feedback names what to change, the learner's hand is
    drawn beside A's picture with the finger to move highlighted; the left-handed setting mirrors the picture."""
    from asl_platform.hands.figure import HIGHLIGHT
    from asl_platform.serving.practice import Practice

    demo = build_demo(LocalBackend(hand_model), ServeConfig())
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    started = shown(handlers["on_practice_start"]("Spell a word", "A", False))
    practice, picture = started["Practice"], np.asarray(started["practice-reference"])
    assert isinstance(practice, Practice) and practice.target == "A" and picture.shape == (240, 240, 3)
    assert "Start camera" in started["practice-feedback"] and "Palm" in started["practice-target"]
    mirrored = shown(handlers["on_left_handed"](practice, True))["practice-reference"]
    assert np.array_equal(np.asarray(mirrored), picture[:, ::-1])

    _, hand = photos["B"][0]
    message = json.dumps({"seq": 7, "landmarks": hand.landmarks.tolist(), "handedness": hand.handedness})
    answer = shown(asyncio.run(handlers["on_practice_hand"](message, practice, None, False)))
    assert answer["practice-live-seq"] == "7" and "not A yet" in answer["practice-feedback"]
    assert "- " in answer["practice-feedback"]  # what to change, in words
    yours = np.asarray(answer["practice-yours"], np.int32)
    assert (np.abs(yours - HIGHLIGHT).sum(axis=-1) < 40).mean() > 0.002  # the finger to move, highlighted
    again = shown(asyncio.run(handlers["on_practice_hand"](message.replace('"seq": 7', '"seq": 8'), practice, None,
                                                           False)))
    assert "practice-yours" not in again  # drawn again a few times a second, not at every hand
