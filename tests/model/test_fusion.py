"""asl_platform.model.fusion: the answer rules of a hand-aware model and how one is chosen."""

from __future__ import annotations

import numpy as np
import pytest

from asl_platform.model.fusion import RULES, choose_rule, fuse, rules_for, score_rules

CLASSES = ["A", "B", "nothing"]


def probs(*rows):
    return np.asarray(rows, dtype=np.float32)


IMAGE = probs([0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1])
LANDMARKS = probs([0.1, 0.9, 0.0], [0.0, 0.0, 0.0], [0.3, 0.3, 0.4])
FOUND = np.array([True, False, True])


def test_each_rule_answers_from_the_right_model():
    assert np.array_equal(fuse("image", IMAGE, LANDMARKS, FOUND, CLASSES), IMAGE)
    assert fuse("landmarks|nothing", IMAGE, LANDMARKS, FOUND, CLASSES).argmax(1).tolist() == [1, 2, 2]
    assert fuse("landmarks|image", IMAGE, LANDMARKS, FOUND, CLASSES).argmax(1).tolist() == [1, 1, 2]
    average = fuse("average|image", IMAGE, LANDMARKS, FOUND, CLASSES)
    np.testing.assert_allclose(average[0], [0.35, 0.6, 0.05])
    np.testing.assert_allclose(average[1], IMAGE[1])  # no hand: the image model alone
    for rule in RULES:
        np.testing.assert_allclose(fuse(rule, IMAGE, LANDMARKS, FOUND, CLASSES).sum(1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown fusion rule"):
        fuse("vote", IMAGE, LANDMARKS, FOUND, CLASSES)


def test_rules_are_scored_over_every_image_and_the_best_is_chosen():
    scores = score_rules(IMAGE, LANDMARKS, FOUND, np.array([1, 1, 2]), CLASSES)
    assert scores == {"image": pytest.approx(1 / 3), "landmarks|nothing": pytest.approx(2 / 3),
                      "landmarks|image": pytest.approx(1.0), "average|image": pytest.approx(2 / 3)}
    assert choose_rule(scores) == "landmarks|image"
    assert choose_rule({"image": 0.5, "average|image": 0.5}) == "image"  # a tie goes to the simpler rule
    assert "landmarks|nothing" not in rules_for(["A", "B"])  # no `nothing` class to answer with
