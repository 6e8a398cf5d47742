"""An honest "not sure": every answer carries its probability, and it is *confident* at or above a threshold
chosen at export, for the answer actually given, on people the model was not trained on: the photo answer (the
fusion rule), the live answer (the landmark model, what the webcam tabs show) and the calibrated answer (a
simulated calibration, ``model.calibration``), each the lowest at which confident answers there are at least
``TARGET_PRECISION`` right (``choose_threshold``). ``serving.backends.confident`` applies it, in every route, and
evaluate reports it.
"""

from __future__ import annotations

import numpy as np

TARGET_PRECISION = 0.98

UNCHOSEN_THRESHOLD = 0.6  # a model exported before its card had thresholds (format < 4): not chosen on data
ANSWER_THRESHOLDS = {"photo": "threshold", "live": "live_threshold", "calibrated": "calibrated_threshold"}


def answer_threshold(confidence: dict | None, answer: str) -> float:
    """The threshold ``answer`` (photo, live or calibrated) is confident at, from a card's ``confidence``
    (as a dict): its own, else the photo one (a card from before thresholds per answer, format < 6), else
    ``UNCHOSEN_THRESHOLD`` (no thresholds at all)."""
    if answer not in ANSWER_THRESHOLDS:
        raise ValueError(f"no threshold for answer {answer!r}: one of {', '.join(ANSWER_THRESHOLDS)}")
    confidence = confidence or {}
    threshold = confidence.get(ANSWER_THRESHOLDS[answer])
    threshold = confidence.get("threshold") if threshold is None else threshold
    return UNCHOSEN_THRESHOLD if threshold is None else float(threshold)


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
