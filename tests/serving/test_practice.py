"""Practice mode: the round's rules (hold, score, streak, next target, spelling, weakest letters,
motion letters), and its HTTP API on a real hand-aware model in-process."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.datasets import detected_photos
from PIL import Image

from asl_platform.config import ServeConfig
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.tabs.practice import feedback_markdown, target_markdown
from asl_platform.serving.practice import Practice, practice_letters

LETTERS = practice_letters(["A", "B", "C", "J", "I", "nothing", "space"])


def test_a_target_held_long_enough_scores_and_the_next_one_comes():
    practice = Practice(LETTERS, hold_s=1.0, seed=3)
    first = practice.start("letters", now=0.0)
    assert first in LETTERS and "nothing" not in LETTERS
    other = next(letter for letter in LETTERS if letter != first)
    assert not practice.update(other, 0.1, True)  # the wrong letter
    assert not practice.update(first, 0.2, False)  # right, but unsure
    assert not practice.update(first, 0.3, True) and not practice.update(first, 1.0, True)
    assert practice.hold_progress(1.0) == pytest.approx(0.7)
    assert practice.update(first, 1.31, True)
    assert (practice.score, practice.streak) == (1, 1) and practice.target != first
    assert practice.table()[0][:3] == [first, 1, 1]
    practice.skip(2.0)
    assert practice.streak == 0 and practice.best_streak == 1 and practice.history[-1] == (1.3, 1)


def test_spelling_a_word_goes_letter_by_letter_and_refuses_unknown_letters():
    practice = Practice(LETTERS, hold_s=0.5)
    assert practice.start("word", now=0.0, word="cab") == "C"
    for now, letter in ((0.0, "C"), (0.6, "C")):
        practice.update(letter, now, True)
    assert practice.target == "A" and "C[**A**]B" in target_markdown(practice)
    for now in (1.0, 1.6):
        practice.update("A", now, True)
    for now in (2.0, 2.6):
        practice.update("B", now, True)
    assert practice.words_done == 1 and practice.score == 4 and practice.target == "C"  # 3 letters + the word
    with pytest.raises(ValueError, match="not X"):
        practice.start("word", now=0.0, word="AX")


def test_weakest_letters_come_back_and_motion_letters_accept_their_final_handshape():
    practice = Practice(LETTERS, hold_s=0.0, seed=1)
    practice.start("weakest", now=0.0)
    missed = practice.target
    practice.skip(1.0)
    practice.update(practice.target, 1.1, True)  # done at once (hold 0): the next target is chosen
    assert practice.target == missed  # the only letter with a miss
    practice.start("word", now=2.0, word="J")
    assert "motion letter" in target_markdown(practice)
    assert practice.update("I", 2.0, True)  # J's final handshape is I's
    assert practice.words_done == 1


@pytest.fixture(scope="module")
def client(hand_model) -> TestClient:
    return TestClient(create_app(LocalBackend(hand_model), ServeConfig(max_request_bytes=1 << 20)))


@pytest.fixture(scope="module")
def photos(asl_alphabet) -> dict[str, list]:
    return detected_photos(asl_alphabet, ["A", "B"], per_class=1, scan=60, skip=12)  # not trained on


def test_the_practice_api_teaches_with_the_models_typical_hands(client, photos):
    catalogue = client.get("/v1/practice/letters").json()
    letters = {entry["letter"]: entry for entry in catalogue["letters"]}
    assert set(letters) == {"A", "B", "C", "space"} and letters["B"]["landmarks"] is not None
    assert letters["A"]["description"].startswith("Fist") and catalogue["hold_s"] == 1.0
    drawing = client.get("/v1/practice/drawing?letter=B")
    assert drawing.status_code == 200 and Image.open(io.BytesIO(drawing.content)).size == (240, 240)
    left = Image.open(io.BytesIO(client.get("/v1/practice/drawing?letter=B&hand=left").content))
    assert np.array_equal(np.asarray(left), np.asarray(Image.open(io.BytesIO(drawing.content)))[:, ::-1])  # mirrored
    assert client.get("/v1/practice/drawing?letter=B&hand=both").status_code == 422
    assert client.get("/v1/practice/drawing?letter=space").status_code == 404  # no hand in the fixture's space photos
    assert "hand_shapes" not in client.get("/v1/model").json()

    b_photo = photos["B"][0][0].read_bytes()
    right = client.post("/v1/practice/check?target=B", content=b_photo, headers={"content-type": "image/jpeg"}).json()
    assert right["correct"] is True and right["label"] == "B" and right["hints"] == [] and right["hand"]["found"]
    wrong = client.post("/v1/practice/check?target=A", content=b_photo, headers={"content-type": "image/jpeg"}).json()
    assert wrong["correct"] is False and wrong["looks_like"] == "B"
    assert wrong["hints"] and all("finger" in hint or "thumb" in hint for hint in wrong["hints"])
    assert any(hint.startswith("Bend") for hint in wrong["hints"])  # B's straight fingers against A's fist
    assert "not A yet" in feedback_markdown(wrong, done=False, progress=0.0) and "- Bend" in feedback_markdown(wrong, False, 0)
    refused = client.post("/v1/practice/check?target=Q", content=b_photo, headers={"content-type": "image/jpeg"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_parameter"
