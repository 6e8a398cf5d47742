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


# --------------------------------------------------------------------------- the pictures (hands.figure)


def colour_share(image, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    pixels = np.asarray(image, np.int32)
    return float((np.abs(pixels - np.asarray(colour)).sum(axis=-1) < tolerance).mean())


def test_the_picture_is_a_filled_hand_nearer_parts_lighter_mirrored_for_the_left_hand(shapes):
    from asl_platform.hands.figure import BACKGROUND, draw_figure

    points = shapes["B"].points
    image = np.asarray(draw_figure(points, 240))
    assert (np.abs(image.astype(int) - BACKGROUND).sum(axis=-1) > 30).mean() > 0.12  # filled: a palm, not lines
    near, far = points.copy(), points.copy()
    near[:, 2], far[:, 2] = 0.0, 0.0
    near[8, 2] = far[20, 2] = -1.0  # the index tip nearest (first), then the little finger's (second)
    def tip(image, index):
        scale_xy = np.asarray(image, np.int32)
        x, y = _pixel(points, index, 240)
        return scale_xy[y, x].sum()
    assert tip(draw_figure(near, 240), 8) > tip(draw_figure(far, 240), 8)  # lighter when nearer
    left = np.asarray(draw_figure(points, 240, mirror=True))
    assert np.array_equal(left, image[:, ::-1])


def _pixel(points: np.ndarray, index: int, size: int) -> tuple[int, int]:
    """Where ``draw_figure`` puts point ``index`` (no motion, no arrows): the same fit as the drawing's."""
    from asl_platform.hands.figure import SUPERSAMPLE

    xy = points[:, :2]
    centre = (xy.min(axis=0) + xy.max(axis=0)) / 2
    big = size * SUPERSAMPLE
    scale = 0.74 * big / (float(np.ptp(xy, axis=0).max()) + 0.5)
    x, y = (big / 2 + (xy[index] - centre) * scale) / SUPERSAMPLE
    return int(x), int(y)


def test_the_palm_direction_is_said_and_j_and_z_show_their_motion(shapes):
    from asl_platform.hands.figure import MOTION, palm_facing

    points = shapes["B"].points
    assert palm_facing(points) == "palm towards the camera"
    down = points @ np.asarray([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)  # tipped forward: fingers away
    assert palm_facing(down) in ("palm down", "palm up") and palm_facing(down) != palm_facing(points)
    turned = points * np.asarray([-1, 1, -1], np.float32)  # turned round (half a turn about the vertical)
    assert palm_facing(turned) == "back of the hand towards the camera"
    assert colour_share(draw_shape(shapes["L"], letter="Z"), MOTION) > 0.002  # the Z's blue arrow
    assert colour_share(draw_shape(shapes["L"]), MOTION) == 0.0


def test_the_learners_hand_has_the_finger_to_move_highlighted_with_an_arrow(hands, shapes):
    from asl_platform.hands.figure import HIGHLIGHT
    from asl_platform.hands.shapes import aligned_target, differences, draw_learner

    flat, fist = hands["B"][8], hands["A"][8]
    bent_index = _with_finger(flat, fist, (6, 7, 8))
    (hint,) = differences(bent_index, shapes["B"])
    assert hint.finger == 1 and hint.text == "Straighten your index finger."
    turned = shapes["B"].points @ np.asarray([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32)  # a quarter turn
    np.testing.assert_allclose(aligned_target(turned, shapes["B"])[[0, 5, 9, 13, 17]], turned[[0, 5, 9, 13, 17]],
                               atol=0.15)  # the target turned onto the learner's palm
    assert colour_share(draw_learner(bent_index, shapes["B"]), HIGHLIGHT) > 0.002
    assert colour_share(draw_learner(flat, shapes["B"]), HIGHLIGHT) == 0.0  # nothing to move: nothing highlighted
