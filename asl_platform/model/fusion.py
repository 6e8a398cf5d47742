"""How a hand-aware model turns its two opinions into one answer, and the rule for images in which
no hand was found. The pipeline scores every rule and exports the best (see ``pipeline``).

- ``image``: the image model alone (what a model without hands does).
- ``landmarks|nothing``: the landmark model where a hand was found; ``nothing`` where none was.
- ``landmarks|image``: the landmark model where a hand was found; the image model where none was.
- ``average|image``: the mean of both models' probabilities where a hand was found; the image model
  where none was.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Rule = Literal["image", "landmarks|nothing", "landmarks|image", "average|image"]
RULES: tuple[Rule, ...] = ("image", "landmarks|nothing", "landmarks|image", "average|image")
NO_HAND_CLASS = "nothing"


def rules_for(classes: list[str]) -> tuple[Rule, ...]:
    """``landmarks|nothing`` needs a ``nothing`` class to answer with."""
    return tuple(rule for rule in RULES if rule != "landmarks|nothing" or NO_HAND_CLASS in classes)


def fuse(rule: Rule, image: np.ndarray, landmarks: np.ndarray, found: np.ndarray, classes: list[str]) -> np.ndarray:
    """(N, C) probabilities of each model and (N,) hand found -> (N, C) probabilities under ``rule``.
    ``landmarks`` rows where no hand was found are ignored."""
    found = np.asarray(found, dtype=bool)[:, None]
    if rule == "image":
        return image
    if rule == "landmarks|nothing":
        nothing = np.zeros_like(image)
        nothing[:, classes.index(NO_HAND_CLASS)] = 1.0
        return np.where(found, landmarks, nothing)
    if rule == "landmarks|image":
        return np.where(found, landmarks, image)
    if rule == "average|image":
        return np.where(found, (image + landmarks) / 2, image)
    raise ValueError(f"unknown fusion rule {rule!r}; choose one of {', '.join(RULES)}")


def score_rules(image: np.ndarray, landmarks: np.ndarray, found: np.ndarray, labels: np.ndarray,
                classes: list[str], weights: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy of every applicable rule over all the given images (no hand counts too), each image
    counting ``weights`` (e.g. every training folder the same); NaN for none."""
    labels = np.asarray(labels)
    if not len(labels):
        return {rule: float("nan") for rule in rules_for(classes)}
    return {rule: float(np.average(fuse(rule, image, landmarks, found, classes).argmax(axis=1) == labels,
                                   weights=weights)) for rule in rules_for(classes)}


def choose_rule(scores: dict[str, float]) -> Rule:
    """The best-scoring rule; a tie goes to the earlier (simpler) rule in ``RULES``; a rule not
    scored (or NaN: no images) never wins over a scored one."""
    def score(rule: Rule) -> float:
        value = scores.get(rule, float("nan"))
        return -1.0 if value != value else value

    return max(RULES, key=lambda rule: (score(rule), -RULES.index(rule)))
