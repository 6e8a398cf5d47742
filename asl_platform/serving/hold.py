"""The one rule for "held": the same thing seen, confidently, frame after frame for ``hold_s`` seconds.
Fingerspelling commits a letter, practice passes a target and calibration takes its shots by it.

What counts as "the same" is the caller's: the same answer (fingerspelling, practice), or for calibration
the same hand pose (``same_pose``: the hand has stopped moving), since there the model's answer is exactly
what is in question. Anything else, or nothing (``None``: no hand, an unsure answer), starts the hold again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

STEADY_TOLERANCE = 0.08  # mean landmark movement, in hand sizes, below which a hand is holding still


@dataclass
class Hold:
    hold_s: float
    key: Any = None  # what is being held (None: nothing)
    since: float = 0.0

    def feed(self, key: Any, now: float, same: Callable[[Any, Any], bool] | None = None) -> bool:
        """One frame's ``key`` (None breaks the hold); True once the same key has been held for ``hold_s``
        seconds. ``same`` compares keys (default ``==``); the key kept is the one the hold began with."""
        if key is None:
            self.key = None
            return False
        if self.key is None or not (same(key, self.key) if same else key == self.key):
            self.key, self.since = key, now
        return now - self.since >= self.hold_s

    def progress(self, now: float) -> float:
        """How far (0..1) the hold is."""
        return 0.0 if self.key is None else min(1.0, (now - self.since) / self.hold_s) if self.hold_s else 1.0

    def restart(self, now: float) -> None:
        """Begin the hold of the same key again (e.g. after a repeated ``del``)."""
        self.since = now

    def clear(self) -> None:
        self.key, self.since = None, 0.0


def pose(hand: dict | None) -> np.ndarray | None:
    """A hand block's pose for ``same_pose``: its 21 points (x, y) about the wrist, in hand sizes; None
    without a hand found."""
    if not hand or not hand.get("found") or hand.get("landmarks") is None:
        return None
    points = np.asarray(hand["landmarks"], np.float32)[:, :2]
    size = float(np.ptp(points, axis=0).max()) or 1.0
    return (points - points[0]) / size


def same_pose(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two poses are the same hand holding still (mean point movement under ``STEADY_TOLERANCE``)."""
    return float(np.linalg.norm(a - b, axis=1).mean()) < STEADY_TOLERANCE
