"""Personal calibration and an honest "not sure".

**Calibration.** A learner signs each letter a few times at the webcam; the landmark rows of those
frames (``hands.landmark_inputs``: 21 points and handedness) are their *profile*. An image of that
person with a hand found is then answered by the nearest of their own shots in the landmark model's
hidden layer (``LandmarkClassifier.embed``): per letter, the squared distance to its closest shot.
Letters the learner skipped are represented by the model's typical hand of that letter
(``hand_shapes.json``), so a partial profile still answers every letter. Images without a hand keep
the model's own answer. Measured on asl-webcam and asl-people (``bench/calibration.py``), the
nearest shot beat the mean of the shots (a prototype) by 1-1.5 points, and mixing in the global
model's answer, or the image model's, lost accuracy: a person's own shots decide.

The profile holds landmark rows only (no image, no embedding), names the model it was made for (its
weights' hash) and is refused by any other model; it is small, belongs to the user and is never
stored by the server.

**Not sure.** Every answer carries its probability; it is *confident* at or above a threshold chosen,
at export, on the validation split (each training folder weighing the same): the lowest at which
confident answers there are at least ``TARGET_PRECISION`` right. Calibrated answers are probabilities
too, ``softmax(-d / (T * scale))`` over the distances, with ``scale`` the profile's own (the median
distance from a shot to the nearest shot of another letter) and ``T`` fitted by likelihood on a
simulated calibration of the validation split, which puts them on the scale the threshold was chosen
on: one threshold for every answer. (A threshold of their own, chosen on that simulation, came out at
0.94: the training data names almost no person, so the simulation calibrates on a crowd, which is far
harder than calibrating to oneself, and it left 35-47% of a person's answers confident.)
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
TARGET_PRECISION = 0.98
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
    logits = -distances / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def with_typical_hands(calibration: Calibration, typical: Calibration) -> Calibration:
    """The profile's shots, plus the model's typical hand for each letter the profile has none of."""
    missing = ~np.isin(typical.labels, calibration.labels)
    return Calibration(np.concatenate([calibration.rows, typical.rows[missing]]),
                       np.concatenate([calibration.labels, typical.labels[missing]]))


# --------------------------------------------------------------------------- choosing on validation data


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                     target: float = TARGET_PRECISION) -> tuple[float, float, float]:
    """The lowest probability threshold at which the (weighted) share of right answers among those at
    or above it is at least ``target``; (threshold, that share, the share of images at or above it).
    Where no threshold reaches the target, the one that comes closest (the most exacting)."""
    confidence = probabilities.max(axis=1)
    right = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    best = (0.0, -1.0, 0.0)
    for threshold in np.round(np.arange(0.0, 1.0, 0.01), 2):
        kept = confidence >= threshold
        if not kept.any():
            break
        precision = float((weights * right * kept).sum() / (weights * kept).sum())
        coverage = float((weights * kept).sum() / weights.sum())
        if precision >= target:
            return float(threshold), precision, coverage
        if precision > best[1]:
            best = (float(threshold), precision, coverage)
    return best


def confident_share(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                    threshold: float) -> tuple[float, float]:
    """(the weighted share of answers at or above ``threshold`` that are right, the share that are)."""
    confident = probabilities.max(axis=1) >= threshold
    right = probabilities.argmax(axis=1) == labels
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    covered = float((weights * confident).sum())
    return (float((weights * right * confident).sum() / covered) if covered else float("nan"),
            covered / float(weights.sum()))


def fit_temperature(distances: np.ndarray, labels: np.ndarray) -> float:
    """The temperature whose ``distance_probabilities`` give the labels the highest likelihood."""
    def loss(temperature: float) -> float:
        p = distance_probabilities(distances, temperature)[np.arange(len(labels)), labels]
        return float(-np.log(np.maximum(p, 1e-12)).mean())

    return float(min(TEMPERATURES, key=loss))


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
