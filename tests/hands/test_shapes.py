"""Practice mode's hand shapes on real MediaPipe landmarks of asl-alphabet photos: a letter's own
held-out photos get no correction, one finger changed gets the hint for that finger."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import detected_photos

from asl_platform.hands.shapes import (
    DESCRIPTIONS,
    MOTION_LETTERS,
    accepted_labels,
    canonical,
    curls,
    draw_shape,
    hints,
    load_shapes,
    save_shapes,
    typical_shapes,
)

LETTERS = ["A", "B", "L", "Y"]


@pytest.fixture(scope="module")
def hands(asl_alphabet) -> dict[str, list[np.ndarray]]:
    """Canonical points of 10 detected photos per letter."""
    found = detected_photos(asl_alphabet, LETTERS, per_class=10, scan=60)
    return {label: [canonical(hand.landmarks, hand.handedness) for _, hand in pairs] for label, pairs in found.items()}


@pytest.fixture(scope="module")
def shapes(hands):
    """Typical shapes from the first 6 photos of each letter (the other 4 are held out)."""
    points = np.stack([p for label in LETTERS for p in hands[label][:6]])
    labels = np.repeat(np.arange(len(LETTERS)), 6)
    return typical_shapes(points, labels, LETTERS)


def test_a_correct_sign_gets_no_correction(hands, shapes):
    for label in LETTERS:
        assert len(hands[label]) == 10, label
        for points in hands[label][6:]:
            assert hints(points, shapes[label]) == [], label


def test_another_letter_gets_the_fingers_that_differ(hands, shapes):
    fist, flat = hands["A"][7], hands["B"][7]
    assert set(hints(fist, shapes["B"])) <= {f"Straighten your {f} finger." for f in ("index", "middle", "ring", "little")}
    assert hints(fist, shapes["B"])
    assert any("Bend" in h for h in hints(flat, shapes["A"]))


def _with_finger(points: np.ndarray, donor: np.ndarray, joints: tuple[int, ...]) -> np.ndarray:
    """``points`` with one finger (its ``joints`` after the knuckle) taken from ``donor``, moved to this knuckle."""
    out = points.copy()
    knuckle = joints[0] - 1
    out[list(joints)] = donor[list(joints)] - donor[knuckle] + points[knuckle]
    return out


def test_one_finger_changed_gets_the_hint_for_that_finger(hands, shapes):
    flat, fist = hands["B"][8], hands["A"][8]
    assert hints(flat, shapes["B"]) == []
    bent_index = _with_finger(flat, fist, (6, 7, 8))  # B with its index finger curled as in a fist
    assert curls(bent_index)[1] > curls(flat)[1] + 1.0
    assert hints(bent_index, shapes["B"]) == ["Straighten your index finger."]
    straight_little = _with_finger(fist, flat, (18, 19, 20))  # A with its little finger out
    assert hints(straight_little, shapes["A"]) == ["Bend your little finger."]


def test_shapes_round_trip_draw_and_cover_every_class(shapes, tmp_path):
    save_shapes(shapes, tmp_path)
    loaded = load_shapes(tmp_path)
    assert set(loaded) == set(LETTERS) and loaded["B"].images == 6
    np.testing.assert_allclose(loaded["B"].curl, shapes["B"].curl, atol=1e-3)
    assert load_shapes(tmp_path / "none") == {}
    image = np.asarray(draw_shape(loaded["L"]))
    assert image.shape == (240, 240, 3) and (image != 250).any()  # a skeleton, not a blank square
    classes = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["del", "nothing", "space"]
    assert set(DESCRIPTIONS) == set(classes)
    assert accepted_labels("J") == {"J", "I"} and accepted_labels("Z") == {"Z", "D"} and accepted_labels("B") == {"B"}
    assert set(MOTION_LETTERS) == {"J", "Z"}
