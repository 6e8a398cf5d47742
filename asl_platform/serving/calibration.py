"""A person's calibration profile (``model.calibration``) from labelled images, through the serving
backend: ``POST /v1/calibration`` and the demo's Calibrate tab both build it here.

Each image is classified as usual; where a hand is found, its landmarks (the hand block) become a shot
of its letter. The demo's live Calibrate view sends hands found in the page instead of images: their
landmarks are the shots. What the profile does is measured on frames kept out of it, through the landmark
model (the live answer): the demo's separate check hold of each letter, or, for ``POST /v1/calibration``,
each shot in turn (the first shot of every letter held out, then the second, ...). A letter whose shots make
those answers worse than the model's is not used (``model.calibration.judge_letters``: its own frames, or
other letters' frames it takes), and a profile that is worse than the model overall is not adopted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asl_platform.model.calibration import (
    MAX_SHOTS_PER_LETTER, CalibrationProfile, LetterVerdict, ProfileError, check_profile, hand_row, judge_letters,
    make_profile,
)
from asl_platform.serving.backends import Backend, Prediction
from asl_platform.serving.protocol import ApiError

ROUNDS = 3  # of judging the letters: dropping one changes what the others do


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


def _found(prediction: Prediction | ApiError | None) -> bool:
    return isinstance(prediction, Prediction) and bool(prediction.hand and prediction.hand["found"])


async def _landmark_answers(backend: Backend, rows: list[list[float]], calibration=None) -> np.ndarray:
    answers = await backend.classify_landmarks([np.asarray(row, np.float32) for row in rows], calibration)
    for answer in answers:
        if isinstance(answer, ApiError):
            raise answer
    return np.stack([answer.probabilities for answer in answers])


async def measure(backend: Backend, shots: dict[str, list[list[float]]],
                  checks: list[tuple[str, list[float]]] | None) -> tuple[dict[str, LetterVerdict], dict | None]:
    """Each letter's verdict and the before/after on frames kept out of the profile: ``checks`` (letter, hand
    row), or else each shot in turn. Answered by the landmark model, alone and with the profile of the letters
    still used (``ROUNDS`` times at most, until those stop changing)."""
    info, classes = backend.info, backend.info["classes"]
    if checks:
        folds = [(list(checks), shots)]  # (frames kept out, the shots that answer them)
    else:
        depth = max(len(rows) for rows in shots.values())
        folds = [([(letter, rows[j]) for letter, rows in shots.items() if j < len(rows)],
                  {letter: rows[:j] + rows[j + 1:] for letter, rows in shots.items()}) for j in range(depth)]
    frames = [frame for held, _ in folds for frame in held]
    if not frames:
        return {}, None
    labels = np.asarray([classes.index(letter) for letter, _ in frames])
    model = await _landmark_answers(backend, [row for _, row in frames])
    letters = {classes.index(letter) for letter in shots}
    kept, verdicts = set(letters), {}
    for _ in range(ROUNDS):
        calibrated, start = [], 0
        for held, rest in folds:
            used = {letter: rows for letter, rows in rest.items() if rows and classes.index(letter) in kept}
            calibrated.append(await _landmark_answers(backend, [row for _, row in held],
                                                      make_profile(info, used).calibration(classes))
                              if used else model[start:start + len(held)])
            start += len(held)
        calibrated = np.concatenate(calibrated)
        verdicts = judge_letters(model, calibrated, labels, kept, letters, verdicts)
        now = {letter for letter, verdict in verdicts.items() if verdict.used}
        if now == kept:
            break
        kept = now
    after = calibrated.argmax(axis=1) == labels if kept else model.argmax(axis=1) == labels
    before = model.argmax(axis=1) == labels
    measured = {"images": len(frames), "accuracy_before": round(float(before.mean()), 4),
                "accuracy_after": round(float(after.mean()), 4), "on": "check" if checks else "shots"}
    return {classes[letter]: verdict for letter, verdict in verdicts.items()}, measured


async def build_profile(backend: Backend, labelled: list[tuple[str, bytes | None]],
                        predictions: list[Prediction | ApiError | None] | None = None,
                        checks: list[tuple[str, Prediction]] | None = None) -> dict:
    """``labelled``: (letter, image bytes, or None for a hand found in the page: no image); ``predictions``:
    their answers where already known (the demo answered its frames as they came; always known for a hand
    without an image); ``checks``: frames of a separate hold of each letter, (letter, answer with its hand),
    which measure the profile (else each shot in turn does). Returns the profile (None when no hand was
    found, or when it would make answers worse: ``adopted``), what each letter gave and whether it is used
    (and why not), and the measurement (None when there was nothing to measure on)."""
    info, classes = backend.info, backend.info["classes"]
    if info.get("kind") != "hand_aware":
        raise ApiError(422, "calibration_unsupported", "calibration needs a hand-aware model (model.kind=hand_aware)")
    predictions = list(predictions or [None] * len(labelled))
    todo = [i for i, p in enumerate(predictions) if p is None]
    if any(labelled[i][1] is None for i in todo):
        raise ValueError("a hand without its image needs its answer")
    for i, result in zip(todo, await backend.classify([labelled[i][1] for i in todo]) if todo else []):
        predictions[i] = result
    letters: dict[str, dict[str, Any]] = {}
    shots: dict[str, list[list[float]]] = {}
    for (letter, _), prediction in zip(labelled, predictions):
        record = letters.setdefault(letter, {"images": 0, "shots": 0, "unusable": 0, "used": False, "why": ""})
        record["images"] += 1
        if not _found(prediction):
            record["unusable"] += 1  # not an image, or no hand in it
            continue
        record["shots"] += 1
        shots.setdefault(letter, []).append(hand_row(prediction.hand))
    shots = {letter: rows[:MAX_SHOTS_PER_LETTER] for letter, rows in shots.items()}  # what a profile keeps
    for letter, record in letters.items():
        record["shots"] = len(shots.get(letter, []))
        record["why"] = "" if record["shots"] else "no hand found in its images"
    if not shots:
        return {"profile": None, "letters": letters, "held_out": None, "adopted": False,
                "why": "no hand was found in any image"}
    check_rows = [(letter, hand_row(p.hand)) for letter, p in checks or [] if letter in shots and _found(p)]
    verdicts, measured = await measure(backend, shots, check_rows or None)
    for letter, verdict in verdicts.items():
        letters[letter].update(used=verdict.used, why=verdict.why)
    used = {letter: rows for letter, rows in shots.items() if verdicts[letter].used} if verdicts else shots
    adopted = bool(used) and (measured is None or measured["accuracy_after"] >= measured["accuracy_before"])
    why = ("" if adopted else "no letter's shots did better than the model alone" if not used else
           "with it, the frames kept out of it were answered worse than by the model alone")
    profile: CalibrationProfile | None = make_profile(info, used) if adopted else None
    return {"profile": profile.model_dump(mode="json") if profile else None, "letters": letters,
            "held_out": measured, "adopted": adopted, "why": why}
