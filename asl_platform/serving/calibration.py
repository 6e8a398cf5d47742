"""A person's calibration profile (``model.calibration``) from labelled images, through the serving
backend: ``POST /v1/calibration`` and the demo's Calibrate tab both build it here.

Each image is classified as usual; where a hand is found, its landmarks (the hand block) become a shot
of its letter. The demo's live Calibrate view sends hands found in the page instead of images: their
landmarks are the shots. How much the profile helps is measured on the spot: one shot of each letter that has
two or more is held out, and answered with and without a profile made from the other shots. The
profile that is returned has every shot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asl_platform.hands.shapes import accepted_labels
from asl_platform.model.calibration import (
    MAX_SHOTS_PER_LETTER, CalibrationProfile, ProfileError, check_profile, hand_row, make_profile,
)
from asl_platform.serving.backends import Backend, Prediction
from asl_platform.serving.protocol import ApiError, top_predictions

HOLD_OUT_FROM = 2  # shots a letter needs before one of them is held out to measure the profile


def checked_calibration(profile: Any, info: dict):
    """A client's profile as the model uses it (``Calibration``), or the ApiError that says why not."""
    if profile is None:
        return None
    if info.get("kind") != "hand_aware":
        raise ApiError(422, "calibration_unsupported", "calibration needs a hand-aware model (model.kind=hand_aware); "
                       "this one reads images only: send no profile")
    try:
        return check_profile(profile, info).calibration(info["classes"])
    except ProfileError as exc:
        raise ApiError(413 if exc.code == "profile_too_large" else 422, exc.code, str(exc)) from None


def _right(prediction: Prediction, letter: str, classes: list[str]) -> bool:
    label = top_predictions(prediction.probabilities, classes, 1)[0]["label"]
    return label in accepted_labels(letter)


async def answered_again(backend: Backend, shots: list[tuple[bytes | None, Prediction]],
                         calibration) -> list[Prediction | ApiError]:
    """Held-out shots answered again with ``calibration``: from the image where there is one (the whole
    model, as /predict answers), else from the hand (the landmark model, as the live modes are answered)."""
    answers: list[Prediction | ApiError | None] = [None] * len(shots)
    images = [i for i, (data, _) in enumerate(shots) if data is not None]
    hands = [i for i, (data, _) in enumerate(shots) if data is None]
    if images:
        for i, answer in zip(images, await backend.classify([shots[i][0] for i in images], calibration=calibration)):
            answers[i] = answer
    if hands:
        rows = [np.asarray(hand_row(shots[i][1].hand), np.float32) for i in hands]
        for i, answer in zip(hands, await backend.classify_landmarks(rows, calibration)):
            answers[i] = answer
    return answers


async def build_profile(backend: Backend, labelled: list[tuple[str, bytes | None]],
                        predictions: list[Prediction | ApiError | None] | None = None) -> dict:
    """``labelled``: (letter, image bytes, or None for a hand found in the page: no image); ``predictions``:
    their answers where already known (the demo answered its frames as they came; always known for a hand
    without an image). Returns the profile (None when no hand was found), what each letter gave, and the
    held-out measurement (None when no letter had two shots)."""
    info, classes = backend.info, backend.info["classes"]
    if info.get("kind") != "hand_aware":
        raise ApiError(422, "calibration_unsupported", "calibration needs a hand-aware model (model.kind=hand_aware)")
    predictions = list(predictions or [None] * len(labelled))
    todo = [i for i, p in enumerate(predictions) if p is None]
    if any(labelled[i][1] is None for i in todo):
        raise ValueError("a hand without its image needs its answer")
    for i, result in zip(todo, await backend.classify([labelled[i][1] for i in todo]) if todo else []):
        predictions[i] = result
    letters: dict[str, dict[str, int]] = {}
    shots: dict[str, list[int]] = {}  # letter -> positions in ``labelled`` with a hand found
    for position, ((letter, _), prediction) in enumerate(zip(labelled, predictions)):
        record = letters.setdefault(letter, {"images": 0, "shots": 0, "unusable": 0})
        record["images"] += 1
        if isinstance(prediction, ApiError) or not (prediction.hand and prediction.hand["found"]):
            record["unusable"] += 1  # not an image, or no hand in it
            continue
        record["shots"] += 1
        shots.setdefault(letter, []).append(position)
    rows = {letter: [hand_row(predictions[i].hand) for i in positions] for letter, positions in shots.items()}
    held_out = None
    held = {letter: positions[-1] for letter, positions in shots.items() if len(positions) >= HOLD_OUT_FROM}
    if held:
        rest = make_profile(info, {letter: rows[letter][:-1] if letter in held else rows[letter] for letter in rows})
        after = await answered_again(backend, [(labelled[i][1], predictions[i]) for i in held.values()],
                                     rest.calibration(classes))
        before = [_right(predictions[i], letter, classes) for letter, i in held.items()]
        after_right = [not isinstance(p, ApiError) and _right(p, letter, classes) for letter, p in zip(held, after)]
        held_out = {"images": len(held), "accuracy_before": round(sum(before) / len(held), 4),
                    "accuracy_after": round(sum(after_right) / len(held), 4)}
    profile: CalibrationProfile | None = make_profile(info, rows) if rows else None
    for record in letters.values():  # what the profile keeps of each letter, not what was sent
        record["shots"] = min(record["shots"], MAX_SHOTS_PER_LETTER)
    return {"profile": profile.model_dump(mode="json") if profile else None, "letters": letters, "held_out": held_out}
