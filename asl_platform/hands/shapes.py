"""Hand shapes for teaching: the typical shape of each letter in the training data, how a learner's
hand differs from it, in plain words, and a drawing of each (``hands.figure``).

A shape is read from the 21 landmarks in the canonical frame of ``hands.features`` (right hand,
wrist at the origin, palm size 1), by measures that do not depend on how the hand is turned:

- the **curl** of each finger: the sum of the bend angles at its joints (0 = straight);
- the **thumb reach**: how far the thumb tip is from the index knuckle, in palm sizes.

A letter's typical shape is its training images' median of those measures, drawn from the training
image closest to that median (a real hand, not a blurred average).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asl_platform.hands.features import FINGERS, PALM, canonical_points
from asl_platform.hands.figure import Arrow, draw_figure
from asl_platform.hands.rows import landmark_inputs

SHAPES_FILE = "hand_shapes.json"
FINGER_NAMES = ("thumb", "index finger", "middle finger", "ring finger", "little finger")
CURL_TOLERANCE = 0.9  # radians of total bend before a finger counts as "different" (a joint is about 0.3-1.5)
REACH_TOLERANCE = 0.45  # palm sizes
MAX_HINTS = 2

# One line per sign, the standard ASL fingerspelling handshapes (right hand, palm to the viewer unless said).
DESCRIPTIONS = {
    "A": "Fist, thumb straight up against the side of the index finger.",
    "B": "Four fingers straight up and together, thumb folded across the palm.",
    "C": "Fingers and thumb curved into a C, as if holding a cup.",
    "D": "Index finger up; the other fingers curl to touch the thumb tip.",
    "E": "Fingers bent down over the thumb, which is tucked across the palm.",
    "F": "Index finger and thumb touch in a circle; the other three fingers up and apart.",
    "G": "Index finger and thumb point sideways, parallel; the other fingers closed.",
    "H": "Index and middle fingers point sideways together; thumb and other fingers closed.",
    "I": "Little finger up; the other fingers in a fist, thumb across them.",
    "J": "Little finger up as for I, then trace a J downwards and curve it towards you.",
    "K": "Index and middle fingers up in a V, thumb tip between them.",
    "L": "Index finger up and thumb out to the side: an L.",
    "M": "Thumb tucked under the index, middle and ring fingers, folded over it.",
    "N": "Thumb tucked under the index and middle fingers, folded over it.",
    "O": "All fingertips curve to meet the thumb tip in an O.",
    "P": "As K, pointed down: index out, middle finger down, thumb between them.",
    "Q": "As G, pointed down: index finger and thumb point to the floor.",
    "R": "Index and middle fingers up and crossed.",
    "S": "Fist with the thumb across the front of the fingers.",
    "T": "Fist with the thumb tucked between the index and middle fingers.",
    "U": "Index and middle fingers straight up and together.",
    "V": "Index and middle fingers straight up and apart: a V.",
    "W": "Index, middle and ring fingers straight up and apart.",
    "X": "Index finger raised and hooked; the other fingers in a fist.",
    "Y": "Thumb and little finger out; the other fingers folded.",
    "Z": "Index finger points out and draws a Z in the air.",
    "del": "The platform's sign for delete (as in the training photos).",
    "nothing": "No hand in view: lower your hand.",
    "space": "The platform's sign for a space (as in the training photos).",
}
# Letters signed with a movement: a photo sees only the hand at one moment, so their final handshape
# is accepted too (J ends as I; Z is drawn with the pointing index, the handshape of D without the thumb).
MOTION_LETTERS = {"J": ("I",), "Z": ("D",)}


def canonical_rows(inputs: np.ndarray) -> np.ndarray:
    """Landmark rows (``hands.landmark_inputs``: (N, 64)) -> (N, 21, 3) canonical points (``hands.features``)."""
    import torch

    return canonical_points(torch.from_numpy(np.asarray(inputs, np.float32))).numpy()


def canonical(landmarks: np.ndarray, handedness: str) -> np.ndarray:
    """(21, 3) image landmarks of one hand -> (21, 3) canonical points."""
    return canonical_rows(landmark_inputs(landmarks, [1.0 if handedness == "Right" else 0.0]))[0]


def curls(points: np.ndarray) -> np.ndarray:
    """(5,) total bend of each finger, thumb first, in radians: 0 straight, about 3 in a fist."""
    out = []
    for finger in FINGERS:
        chain = (0, *finger)
        total = 0.0
        for a, b, c in zip(chain, chain[1:], chain[2:]):
            u, v = points[b] - points[a], points[c] - points[b]
            cosine = float(np.dot(u, v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-9))
            total += float(np.arccos(np.clip(cosine, -1.0, 1.0)))
        out.append(total)
    return np.asarray(out, np.float32)


def thumb_reach(points: np.ndarray) -> float:
    """Distance from the thumb tip to the index knuckle (MCP), in palm sizes."""
    return float(np.linalg.norm(points[4] - points[5]))


@dataclass
class HandShape:
    """A letter's typical shape: its measures, and the canonical points of a training hand that has them."""

    points: np.ndarray  # (21, 3)
    curl: np.ndarray  # (5,)
    reach: float
    images: int

    def to_json(self) -> dict:
        return {"points": np.round(self.points, 4).tolist(), "curl": np.round(self.curl, 4).tolist(),
                "reach": round(self.reach, 4), "images": self.images}

    @classmethod
    def from_json(cls, data: dict) -> HandShape:
        return cls(np.asarray(data["points"], np.float32), np.asarray(data["curl"], np.float32),
                   float(data["reach"]), int(data["images"]))


def typical_shapes(points: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, HandShape]:
    """Per class with at least one hand: the median curl and reach of ``points`` (N, 21, 3 canonical),
    and the points of the hand closest to them."""
    measures = np.asarray([np.append(curls(p), thumb_reach(p)) for p in points], np.float32).reshape(-1, 6)
    shapes = {}
    for index, name in enumerate(classes):
        rows = np.flatnonzero(np.asarray(labels) == index)
        if not len(rows):
            continue
        median = np.median(measures[rows], axis=0)
        closest = rows[np.argmin(np.abs(measures[rows] - median).sum(axis=1))]
        shapes[name] = HandShape(points[closest], median[:5], float(median[5]), int(len(rows)))
    return shapes


def shapes_of(inputs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, HandShape]:
    """``typical_shapes`` of landmark rows (``hands.landmark_inputs``: (N, 64), hands found only)."""
    return typical_shapes(canonical_rows(inputs), np.asarray(labels), classes)


def save_shapes(shapes: dict[str, HandShape], directory: str | Path) -> Path:
    path = Path(directory) / SHAPES_FILE
    path.write_text(json.dumps({name: shape.to_json() for name, shape in shapes.items()}, indent=1))
    return path


def load_shapes(directory: str | Path) -> dict[str, HandShape]:
    """A model folder's typical shapes; empty when it has none (an image model, an older export)."""
    path = Path(directory) / SHAPES_FILE
    if not path.is_file():
        return {}
    return {name: HandShape.from_json(data) for name, data in json.loads(path.read_text()).items()}


@dataclass(frozen=True)
class Hint:
    """One thing to change: in words, and which finger (0 thumb .. 4 little finger) it is about."""

    text: str
    finger: int
    weight: float  # how far outside the tolerance, in tolerances (the largest first)


def differences(learner: np.ndarray, target: HandShape) -> list[Hint]:
    """What to change so that ``learner`` (canonical points) takes ``target``'s shape: the largest
    differences first, at most ``MAX_HINTS``; empty when every measure is within tolerance."""
    found: list[Hint] = []
    for finger, (name, mine, theirs) in enumerate(zip(FINGER_NAMES, curls(learner), target.curl)):
        gap = float(mine - theirs)
        if abs(gap) > CURL_TOLERANCE:
            found.append(Hint(f"{'Straighten' if gap > 0 else 'Bend'} your {name}.", finger, abs(gap) / CURL_TOLERANCE))
    gap = thumb_reach(learner) - target.reach
    if abs(gap) > REACH_TOLERANCE:
        found.append(Hint("Bring your thumb in, against your hand." if gap > 0
                          else "Move your thumb out, away from your hand.", 0, abs(gap) / REACH_TOLERANCE))
    return sorted(found, key=lambda hint: -hint.weight)[:MAX_HINTS]


def hints(learner: np.ndarray, target: HandShape) -> list[str]:
    """``differences`` in words."""
    return [hint.text for hint in differences(learner, target)]


def aligned_target(learner: np.ndarray, target: HandShape) -> np.ndarray:
    """``target``'s points turned to the learner's palm (the rotation that best maps its wrist and knuckles onto
    the learner's: Kabsch), so that where a fingertip should go can be drawn on the learner's hand."""
    palm = [0, *PALM]
    source, destination = target.points[palm], learner[palm]
    u, _, vt = np.linalg.svd(source.T @ destination)
    flip = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    return target.points @ (u @ flip @ vt)


def accepted_labels(target: str) -> set[str]:
    """What counts as signing ``target``: itself, and a motion letter's final handshape."""
    return {target, *MOTION_LETTERS.get(target, ())}


def draw_shape(shape: HandShape, size: int = 240, *, letter: str | None = None, mirror: bool = False):
    """A drawing of ``shape``'s hand (``hands.figure``), upright as the camera sees it, with the motion of
    ``letter`` if it is J or Z; ``mirror`` for a left hand."""
    return draw_figure(shape.points, size, mirror=mirror, motion=letter if letter in MOTION_LETTERS else None)


def draw_learner(learner: np.ndarray, target: HandShape | None, size: int = 240, *, mirror: bool = False):
    """The learner's hand (canonical points) drawn as ``draw_shape`` draws the target, beside it: each finger a
    hint names highlighted, with an arrow from its tip to where the target's tip is."""
    arrows: tuple[Arrow, ...] = ()
    if target is not None:
        goal = aligned_target(learner, target)
        tips = {finger: FINGERS[finger][-1] for finger in range(len(FINGERS))}
        arrows = tuple(Arrow(hint.finger, tuple(goal[tips[hint.finger], :2])) for hint in differences(learner, target))
    return draw_figure(learner, size, mirror=mirror, arrows=arrows)
