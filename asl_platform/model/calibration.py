"""Personal calibration: a learner's profile, and how it adapts the model's answers.

**Calibration.** A learner signs each letter a few times at the webcam; the landmark rows of those
frames (``hands.landmark_inputs``: 21 points and handedness) are their *profile*. The profile adapts
the model's answer, it never replaces it: in the landmark model's hidden layer
(``LandmarkClassifier.embed``) each letter's nearest shot is at a squared distance ``d`` (divided by
the profile's own scale), and the calibrated answer is the product of the two experts,
``softmax(log p_model - d / T)`` (``calibrated_probabilities``). A hand near its own shot of a letter
moves the answer to that letter, more the nearer it is; a hand near no shot keeps the model's answer;
and a model that is sure (a look-alike shot that contradicts it) is not overturned by a shot that is
only a little nearer. A letter the learner skipped is one the profile says nothing of: it counts as near as
the nearest shot, so the profile neither pulls a hand towards it nor away. ``T`` is fitted by likelihood on a simulated calibration of people the model
was not trained on (each held-out person's own rows, their fold's model): it says how far a person's
own shots are worth trusting over the model. Measured on asl-webcam and asl-people under the demo's
real conditions (a transition frame, a look-alike, one shot, skipped letters) in ``bench/calibration.py``:
replacing the model's answer by the nearest shot, as before, scored more on clean shots (97.5 vs 93.8% per
person on asl-people) but lost 90-95 points on a letter with look-alike shots, 40 with a transition frame and
42 on skipped letters; the product never lost more than 1.5 points on a letter there but with look-alikes
(bench/README.md, issue 33).

**Which letters are used.** A letter's shots are kept only where they do not make answers worse on
frames kept out of the profile (``letter_verdicts``): the demo's separate check hold of each letter, or
for ``POST /v1/calibration`` each shot in turn held out. A letter loses its shots when its own frames
come out worse with them, or when it takes more frames of other letters from the model than it puts
right; a profile that is worse overall is not adopted.

The profile holds landmark rows only (no image, no embedding), names the model it was made for (its
weights' hash) and is refused by any other model; it is small, belongs to the user and is never
stored by the server.

The "not sure" threshold of every answer (the calibrated one too) is ``model.confidence``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asl_platform.errors import UserError
from asl_platform.hands.rows import INPUT_DIM

PROFILE_FORMAT = "asl-platform calibration profile"
PROFILE_VERSION = 1
ROW_SIZE = INPUT_DIM  # 21 x (x, y, z) + handedness: ``hands.landmark_inputs``
MAX_SHOTS_PER_LETTER = 10
MAX_COORDINATE = 1e6  # landmark pixels; anything larger is not a hand from a camera
SIMULATED_SHOTS = 3  # per letter, in the validation split's simulated calibration
TEMPERATURES = np.geomspace(0.01, 10, 61)

Embed = Callable[[np.ndarray], np.ndarray]  # (N, 64) landmark rows -> (N, H) hidden features


class ProfileError(UserError):
    """A profile this model cannot use: ``code`` says which way (malformed, too large, another model's)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    sha256: str | None = Field(description="the model's weights hash (/v1/model): a profile fits one model only")


class CalibrationProfile(BaseModel):
    """One person's calibration for one model: a few landmark rows per letter."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["asl-platform calibration profile"] = PROFILE_FORMAT
    format_version: int = PROFILE_VERSION
    model: ProfileModel
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    shots: dict[str, list[list[float]]] = Field(description="letter -> landmark rows (21 x (x, y, z) pixels, then "
                                                            "handedness: 1 right, 0 left)")

    def calibration(self, classes: list[str]) -> Calibration:
        rows = [row for letter in self.shots for row in self.shots[letter]]
        labels = [classes.index(letter) for letter in self.shots for _ in self.shots[letter]]
        return Calibration(np.asarray(rows, np.float32).reshape(-1, ROW_SIZE), np.asarray(labels, np.int64))


class Calibration(NamedTuple):
    """What a checked profile gives the model: its rows and their class indices (small, pickles cheaply)."""

    rows: np.ndarray  # (M, 64) float32
    labels: np.ndarray  # (M,) int64


def check_profile(raw: Any, model: dict) -> CalibrationProfile:
    """A profile sent by a client, checked against the served ``model`` (its ``/v1/model`` description):
    every way it can be wrong is a ``ProfileError`` that says what to do."""
    if not isinstance(raw, dict):
        raise ProfileError("invalid_profile", "the calibration profile must be a JSON object (what /v1/calibration returns)")
    if raw.get("format") != PROFILE_FORMAT or raw.get("format_version") != PROFILE_VERSION:
        raise ProfileError("invalid_profile", f"not a calibration profile of this version (format {PROFILE_FORMAT!r}, "
                                              f"format_version {PROFILE_VERSION}): calibrate again")
    try:
        profile = CalibrationProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ProfileError("invalid_profile", f"the calibration profile is malformed: {problems}") from None
    made_for = profile.model
    if made_for.sha256 != model.get("sha256") or (made_for.name, made_for.version) != (model["name"], model["version"]):
        def named(name: str, version: str, sha256: str | None) -> str:
            return f"{name}/{version} (weights {str(sha256)[:12]})"

        raise ProfileError("profile_model_mismatch",
                           f"this profile was made for another model, {named(made_for.name, made_for.version, made_for.sha256)}"
                           f", than the one served, {named(model['name'], model['version'], model.get('sha256'))}: "
                           "calibrate again with this model")
    unknown = sorted(set(profile.shots) - set(model["classes"]))
    if unknown:
        raise ProfileError("invalid_profile", f"the calibration profile has letters the model does not know: "
                                              f"{', '.join(unknown)}")
    crowded = sorted(letter for letter, rows in profile.shots.items() if len(rows) > MAX_SHOTS_PER_LETTER)
    if crowded:
        raise ProfileError("profile_too_large", f"a calibration profile holds at most {MAX_SHOTS_PER_LETTER} shots per "
                                                f"letter (more for {', '.join(crowded)})")
    for letter, rows in profile.shots.items():
        for number, row in enumerate(rows):
            if len(row) != ROW_SIZE or not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in row) \
                    or row[-1] not in (0.0, 1.0):
                raise ProfileError("invalid_profile", f"calibration profile shots[{letter}][{number}]: a shot is "
                                                      f"{ROW_SIZE} finite numbers (21 x (x, y, z), then handedness 1 or 0)")
    if not any(profile.shots.values()):
        raise ProfileError("invalid_profile", "the calibration profile has no shots")
    return profile


def hand_row(hand: dict) -> list[float]:
    """A shot from a /predict hand block (landmarks in the upload's pixels, handedness)."""
    points = np.asarray(hand["landmarks"], np.float32).reshape(-1)
    return [round(float(v), 2) for v in points] + [1.0 if hand["handedness"] == "Right" else 0.0]


def make_profile(model: dict, shots: dict[str, list[list[float]]]) -> CalibrationProfile:
    """A profile for ``model`` (its description) from shots per letter, letters in the model's order."""
    ordered = {letter: shots[letter][:MAX_SHOTS_PER_LETTER] for letter in model["classes"] if shots.get(letter)}
    return CalibrationProfile(model=ProfileModel(name=model["name"], version=model["version"], sha256=model.get("sha256")),
                              shots=ordered)


# --------------------------------------------------------------------------- the calibrated answer


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def shot_distances(embed: Embed, reference: Calibration, queries: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C): per query and letter, the squared hidden-layer distance to that letter's nearest reference
    row, divided by the references' own scale; infinite for a letter with no reference row."""
    hidden_reference, hidden_queries = embed(reference.rows), embed(queries)
    distances = _squared_distances(hidden_queries, hidden_reference)
    out = np.full((len(queries), num_classes), np.inf)
    for label in np.unique(reference.labels):
        out[:, label] = distances[:, reference.labels == label].min(axis=1)
    own = _squared_distances(hidden_reference, hidden_reference)
    other = reference.labels[:, None] != reference.labels[None, :]
    nearest_other = np.where(other, own, np.inf).min(axis=1)
    finite = nearest_other[np.isfinite(nearest_other)]
    scale = float(np.median(finite)) if len(finite) else 1.0
    return out / max(scale, 1e-12)


def distance_probabilities(distances: np.ndarray, temperature: float) -> np.ndarray:
    """The shots alone, ``softmax(-d / T)``: what a profile that replaces the model would answer (kept for the
    benchmark's comparison, ``bench/calibration.py``)."""
    return calibrated_probabilities(None, distances, temperature)


def calibrated_probabilities(model: np.ndarray | None, distances: np.ndarray, temperature: float) -> np.ndarray:
    """The calibrated answer: the model's probabilities ``model`` (N, C) adapted by the nearest shots,
    ``softmax(log p_model - d / T)``. A letter with no shot (infinite ``d``) is one the profile says nothing
    of: as near as the nearest shot, so the profile neither pulls a hand towards it nor away. ``model`` None:
    the shots alone."""
    if model is not None:
        finite = np.isfinite(distances)
        fill = np.where(finite, distances, np.inf).min(axis=1, keepdims=True)
        fill = np.where(np.isfinite(fill), fill, 1.0)  # no shot at all: the model alone
        distances = np.where(finite, distances, fill)
    logits = -distances / temperature
    if model is not None:
        logits = logits + np.log(np.maximum(np.asarray(model, np.float64), 1e-9))
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def with_typical_hands(calibration: Calibration, typical: Calibration) -> Calibration:
    """The profile's shots, plus the model's typical hand for each letter the profile has none of."""
    missing = ~np.isin(typical.labels, calibration.labels)
    return Calibration(np.concatenate([calibration.rows, typical.rows[missing]]),
                       np.concatenate([calibration.labels, typical.labels[missing]]))


# --------------------------------------------------------------------------- choosing on validation data


def fit_temperature(distances: np.ndarray, labels: np.ndarray, model: np.ndarray | None = None,
                    weights: np.ndarray | None = None) -> float:
    """The temperature whose ``calibrated_probabilities`` (of the model's answers ``model``, or the shots
    alone) give the labels the highest likelihood, each row counting its weight (each held-out person the same)."""
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)

    def loss(temperature: float) -> float:
        p = calibrated_probabilities(model, distances, temperature)[np.arange(len(labels)), labels]
        return float(-(weights * np.log(np.maximum(p, 1e-12))).sum() / weights.sum())

    return float(min(TEMPERATURES, key=loss))


# --------------------------------------------------------------------------- which letters a profile keeps


class LetterVerdict(NamedTuple):
    """What a letter's shots did to the frames kept out of the profile."""

    used: bool
    frames: int  # of this letter, kept out
    right_before: int  # of those, right by the model alone
    right_after: int  # right with the profile
    lost: int  # of its frames the model had right, now wrong but not taken by another letter's shots: its own doing
    taken: int  # other letters' frames the model had right and the profile now answers as this letter

    @property
    def why(self) -> str:
        if self.used:
            return "helps" if self.right_after > self.right_before else "no worse than the model"
        if self.lost and self.lost >= self.taken:
            return f"its own frames came out worse with it ({self.right_after} of {self.frames} right, the model alone " \
                   f"{self.right_before})"
        if self.taken:
            return f"it took {self.taken} frame(s) of other letters that the model had right"
        return "its shots did not help on its frames kept out"


def judge_letters(model: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, kept: set[int],
                  letters: set[int], previous: dict[int, LetterVerdict] | None = None) -> dict[int, LetterVerdict]:
    """One look at frames kept out of the profile: ``model`` and ``calibrated`` (N, C) answers on them (the
    latter made with the shots of ``kept`` only), ``labels`` what each frame is. A letter of ``letters`` (the
    profile's, class indices) is used where it does no worse than the model: what it puts right of its own
    frames, less what it loses of them (to no other letter's shots) and less the other letters' frames it takes
    (answered as it, where the model had them right), is not below zero. A letter already dropped keeps the
    verdict it was dropped with (``previous``: the last round's), so that its ``why`` stays true."""
    model_answer, answer = model.argmax(axis=1), calibrated.argmax(axis=1)
    model_right, right = model_answer == labels, answer == labels
    verdicts = {}
    for letter in sorted(letters):
        own = labels == letter
        before = int(model_right[own].sum())
        if letter not in kept:
            verdicts[letter] = (previous or {}).get(letter) or LetterVerdict(False, int(own.sum()), before, before, 0, 0)
            continue
        gained = int(np.sum(own & ~model_right & right))
        lost = int(np.sum(own & model_right & ~right & ~np.isin(answer, list(kept - {letter}))))
        taken = int(np.sum(~own & model_right & ~right & (answer == letter)))
        used = gained - lost - taken > 0 or (gained - lost >= 0 and taken == 0)  # a letter that takes must give more
        verdicts[letter] = LetterVerdict(used, int(own.sum()), before, int(right[own].sum()), lost, taken)
    return verdicts


def letter_verdicts(answer: Callable[[set[int]], np.ndarray], model: np.ndarray, labels: np.ndarray,
                    letters: set[int], rounds: int = 3) -> dict[int, LetterVerdict]:
    """``judge_letters`` until the letters used stop changing (dropping one changes what the others do):
    ``answer(kept)`` gives the calibrated answers made with the shots of ``kept`` only."""
    kept = set(letters)
    verdicts = judge_letters(model, answer(kept), labels, kept, letters)
    for _ in range(rounds - 1):
        now = {letter for letter, verdict in verdicts.items() if verdict.used}
        if now == kept:
            break
        kept = now
        verdicts = judge_letters(model, answer(kept) if kept else model, labels, kept, letters, verdicts)
    return verdicts


def simulated_calibration(embed: Embed | dict[Any, Embed], rows: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                          num_classes: int, shots: int = SIMULATED_SHOTS,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrate on ``shots`` rows per letter of each group (each held-out person, or each training folder's
    validation hands) and measure on the rest: (distances of the rest, their labels, their positions in
    ``rows``). ``embed``: the model's hidden layer, or one per group (a held-out person's is the model of the
    fold that was not trained on them)."""
    rng = np.random.default_rng(seed)
    out_distances, out_labels, out_positions = [], [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        chosen = []
        for label in np.unique(labels[members]):
            of_label = members[labels[members] == label]
            if len(of_label) > shots:
                chosen.extend(rng.choice(of_label, shots, replace=False))
        if not chosen:
            continue
        rest = np.setdiff1d(members, chosen)
        if not len(rest):
            continue
        reference = Calibration(rows[chosen], labels[chosen])
        distances = shot_distances(embed[group] if isinstance(embed, dict) else embed, reference, rows[rest], num_classes)
        known = np.isin(labels[rest], reference.labels)  # a letter with no shot cannot be answered right here
        out_distances.append(distances[known])
        out_labels.append(labels[rest][known])
        out_positions.append(rest[known])
    if not out_distances:
        return np.zeros((0, num_classes)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_distances), np.concatenate(out_labels), np.concatenate(out_positions)
