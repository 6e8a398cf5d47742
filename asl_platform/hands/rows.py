"""The landmark model's input format, owned here: one row per image of 21 x (x, y, z) image landmarks
(pixels, x right, y down, z MediaPipe's relative depth) then handedness (1 right, 0 left), and the
per-image table the hands stage produces. Detection, training, calibration and serving all build
their rows with ``landmark_inputs`` / ``hand_rows``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NUM_LANDMARKS = 21
POINT_VALUES = NUM_LANDMARKS * 3
INPUT_DIM = POINT_VALUES + 1


def landmark_inputs(landmarks: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The landmark model's raw input rows (N, 64): flattened landmarks, then handedness (1 right, 0 left)."""
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, POINT_VALUES)
    return np.concatenate([landmarks, np.asarray(right, dtype=np.float32).reshape(-1, 1)], axis=1)


def hand_rows(hands: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Rows (zeros where no hand) and whether a hand was found, from ``Hand`` objects or None."""
    found = np.asarray([hand is not None for hand in hands], dtype=bool)
    points = np.zeros((len(hands), NUM_LANDMARKS, 3), np.float32)
    right = np.zeros(len(hands), np.float32)
    for i, hand in enumerate(hands):
        if hand is not None:
            points[i], right[i] = hand.landmarks, 1.0 if hand.handedness == "Right" else 0.0
    return landmark_inputs(points, right), found


@dataclass
class HandTable:
    """One row per listed file. Where no hand was found (or the file was unreadable) ``found`` is
    False and the landmark arrays are zeros."""

    paths: np.ndarray
    labels: np.ndarray
    errors: np.ndarray
    found: np.ndarray  # bool
    landmarks: np.ndarray  # (N, 21, 3) float32, pixels of the decoded image (JPEGs over 640 px decode reduced)
    right: np.ndarray  # (N,) float32: 1 for a hand MediaPipe labels "Right", else 0
    score: np.ndarray  # (N,) float32
    box: np.ndarray  # (N, 4) float32: x0, y0, x1, y1 pixels
    from_cache: bool = False

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], from_cache: bool = False) -> HandTable:
        """From column arrays (a Ray Data result or a cached Parquet file); no columns: no rows."""
        rows = len(columns.get("path", ()))
        return cls(
            paths=np.asarray(columns.get("path", ()), dtype=object),
            labels=np.asarray(columns.get("label", ()), dtype=np.int64),
            errors=np.asarray(columns.get("error", ()), dtype=object),
            found=np.asarray(columns.get("found", ()), dtype=bool),
            landmarks=np.asarray(columns.get("landmarks", np.zeros((0, POINT_VALUES))), np.float32).reshape(rows, NUM_LANDMARKS, 3),
            right=np.asarray(columns.get("right", ()), dtype=np.float32),
            score=np.asarray(columns.get("score", ()), dtype=np.float32),
            box=np.asarray(columns.get("box", np.zeros((0, 4))), np.float32).reshape(rows, 4),
            from_cache=from_cache,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The table as flat column arrays (what the cache stores)."""
        return {"path": self.paths.astype(str), "label": self.labels.astype(np.int32), "error": self.errors.astype(str),
                "found": self.found.astype(bool), "landmarks": self.landmarks.reshape(len(self.paths), POINT_VALUES),
                "right": self.right, "score": self.score, "box": self.box}

    @property
    def valid(self) -> np.ndarray:
        return self.errors == ""

    def inputs(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """What the landmark model reads: (N, 64) rows (``landmark_inputs``)."""
        return landmark_inputs(self.landmarks[rows], self.right[rows])

    def in_order(self, paths: Sequence[str]) -> HandTable:
        """The rows of ``paths``, in that order (Ray Data does not promise order)."""
        position = {path: i for i, path in enumerate(self.paths)}
        order = np.asarray([position[path] for path in paths], dtype=np.int64)
        return HandTable(self.paths[order], self.labels[order], self.errors[order], self.found[order],
                         self.landmarks[order], self.right[order], self.score[order], self.box[order], self.from_cache)

    def detection_rates(self, classes: list[str], rows: np.ndarray | None = None) -> dict[str, float]:
        """Share of readable images with a hand found, per class."""
        keep = self.valid if rows is None else rows & self.valid
        return {name: float(self.found[keep & (self.labels == i)].mean()) if np.any(keep & (self.labels == i))
                else float("nan") for i, name in enumerate(classes)}
