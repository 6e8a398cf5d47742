"""The one hold rule (fingerspelling, practice and calibration): the same thing held for hold_s seconds, and
the steady-hand pose calibration holds."""

from __future__ import annotations

import numpy as np

from asl_platform.serving.hold import Hold, pose, same_pose


def test_a_hold_completes_after_hold_s_of_the_same_key_and_restarts_on_anything_else():
    hold = Hold(1.0)
    assert not hold.feed("A", 0.0) and not hold.feed("A", 0.5) and hold.progress(0.5) == 0.5
    assert not hold.feed("B", 0.9)  # another key: a new hold
    assert not hold.feed("B", 1.5) and hold.feed("B", 2.0)
    assert not hold.feed(None, 2.1) and hold.key is None and hold.progress(2.1) == 0.0  # nothing breaks it
    assert Hold(0.0).feed("A", 0.0)  # a hold of no length is done at once


def hand(points: np.ndarray) -> dict:
    return {"found": True, "landmarks": points.tolist(), "handedness": "Right"}


def test_a_steady_hand_is_the_same_pose_and_a_moving_or_changing_one_is_not():
    rng = np.random.default_rng(0)
    still = rng.uniform(100, 200, (21, 3))
    shifted = still + [30.0, -20.0, 0.0]  # the whole hand moved across the frame: the same shape
    jitter = still + rng.normal(0, 0.5, (21, 3))  # a detector's frame-to-frame noise
    changed = still.copy()
    changed[5:] = rng.uniform(100, 200, (16, 3))  # the fingers changed: another sign on the way
    assert same_pose(pose(hand(still)), pose(hand(jitter))) and same_pose(pose(hand(still)), pose(hand(shifted)))
    assert not same_pose(pose(hand(still)), pose(hand(changed)))
    assert pose({"found": False}) is None and pose(None) is None
    hold = Hold(0.5)
    frames = [still, jitter, jitter, changed, changed, changed]
    held = [hold.feed(pose(hand(f)), t * 0.3, same_pose) for t, f in enumerate(frames)]
    assert held == [False, False, True, False, False, True]  # still for 0.6 s; the change starts a new hold
