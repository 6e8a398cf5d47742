"""A hand drawn so that a learner can copy it: a filled palm and fingers shaded by depth (nearer is
lighter, and drawn over what is behind it), nails where the back of the hand faces the camera, the
way the palm faces in words, the motion of J and Z as an arrow, and, for a learner's own hand, the
finger to move highlighted with an arrow to where its tip should go.

Why drawn, not photographed: the same drawing shows the letter's typical hand (``hands.shapes``) and
the learner's hand found a moment ago, from the same 21 landmarks, so the two can be compared side by
side; and it needs no photo whose licence allows shipping it. Points are the canonical points of
``hands.features`` (a right hand, wrist at the origin, palm size 1; x right, y down as the camera sees
it, z away from the camera). A left-handed learner sees the mirror image (``mirror``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asl_platform.hands.features import FINGERS

SUPERSAMPLE = 3  # drawn at 3x and scaled down: smooth edges without an anti-aliasing library
BACKGROUND = (250, 250, 250)
NEAR_SKIN, FAR_SKIN = np.array((246, 211, 182)), np.array((196, 146, 116))
EDGE = (112, 72, 52)
NAIL = (252, 232, 226)
HIGHLIGHT = (235, 110, 20)
MOTION = (30, 110, 220)
WIDTHS = (0.27, 0.23, 0.24, 0.22, 0.19)  # thumb .. little finger, in palm sizes
PALM_OUTLINE = (0, 1, 5, 9, 13, 17)
# The path a motion letter's fingertip traces, in palm sizes from the tip (x right, y down), as the letter
# reads on the screen: Z by the index finger, J by the little finger (down, then hooked).
MOTION_PATHS = {
    "Z": (8, ((0.25, -0.35), (1.15, -0.35), (0.25, 0.45), (1.15, 0.45))),
    "J": (20, ((0.0, 0.15), (0.0, 0.75), (-0.1, 0.98), (-0.35, 1.08), (-0.6, 0.98), (-0.72, 0.75))),
}


@dataclass(frozen=True)
class Arrow:
    """A finger to move (0 thumb .. 4 little finger), drawn highlighted, and where its tip should go
    (canonical points; None: highlight only)."""

    finger: int
    to: tuple[float, float] | None = None


def palm_facing(points: np.ndarray) -> str:
    """Which way the palm faces, in the learner's words: from the normal of the palm's plane (wrist, index
    and little-finger knuckles), its largest component."""
    normal = -np.cross(points[5] - points[0], points[17] - points[0])  # a right hand: towards the palm side
    normal = normal / max(float(np.linalg.norm(normal)), 1e-9)
    axis = int(np.argmax(np.abs(normal)))
    sign = float(normal[axis]) > 0
    return [("palm to the side", "palm to the side"), ("palm up", "palm down"),
            ("palm towards the camera", "back of the hand towards the camera")][axis][int(sign)]


def back_of_hand_visible(points: np.ndarray) -> bool:
    return palm_facing(points) == "back of the hand towards the camera"


def draw_figure(points: np.ndarray, size: int = 240, *, mirror: bool = False, motion: str | None = None,
                arrows: tuple[Arrow, ...] = (), background: tuple[int, int, int] = BACKGROUND):
    """``points`` (21, 3 canonical) drawn as a hand (a PIL image ``size`` square)."""
    from PIL import Image, ImageDraw, ImageOps

    points = np.asarray(points, np.float32)
    path = _motion_path(points, motion)
    extent = np.concatenate([points[:, :2], path, *[[arrow.to] for arrow in arrows if arrow.to is not None]])
    big = size * SUPERSAMPLE
    centre = (extent.min(axis=0) + extent.max(axis=0)) / 2
    scale = 0.74 * big / max(float(np.ptp(extent, axis=0).max()) + 0.5, 1e-6)

    def pixel(xy) -> tuple[float, float]:
        return (big / 2 + float(xy[0] - centre[0]) * scale, big / 2 + float(xy[1] - centre[1]) * scale)

    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    z = points[:, 2]
    near, far = float(z.min()), float(z.max())

    def skin(depth: float) -> tuple[int, ...]:
        t = (depth - near) / max(far - near, 1e-6)
        return tuple(int(c) for c in NEAR_SKIN + (FAR_SKIN - NEAR_SKIN) * t)

    highlighted = {arrow.finger for arrow in arrows}
    items = [(float(z[list(PALM_OUTLINE)].mean()), -1)] + [(float(z[list(f)].mean()), i) for i, f in enumerate(FINGERS)]
    for _, index in sorted(items, reverse=True):  # far first: nearer parts cover them
        if index < 0:
            _palm(draw, [pixel(points[i]) for i in PALM_OUTLINE], skin(float(z[list(PALM_OUTLINE)].mean())),
                  WIDTHS[2] * scale)
            continue
        chain = FINGERS[index]
        _finger(draw, [pixel(points[i]) for i in chain], [skin(float(z[i])) for i in chain], WIDTHS[index] * scale,
                HIGHLIGHT if index in highlighted else EDGE, nail=back_of_hand_visible(points) and index > 0)
    for arrow in arrows:
        if arrow.to is not None:
            _arrow(draw, [pixel(points[FINGERS[arrow.finger][-1]]), pixel(arrow.to)], HIGHLIGHT, scale * 0.07)
    if len(path):
        _arrow(draw, [pixel(xy) for xy in path], MOTION, scale * 0.06)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return ImageOps.mirror(image) if mirror else image


def _motion_path(points: np.ndarray, motion: str | None) -> np.ndarray:
    if motion not in MOTION_PATHS:
        return np.zeros((0, 2), np.float32)
    tip, offsets = MOTION_PATHS[motion]
    return points[tip, :2] + np.asarray(offsets, np.float32)


def _palm(draw, corners: list, colour: tuple, width: float) -> None:
    """The palm: its outline polygon, fattened by a rounded border (the flesh around the knuckles)."""
    ring = [*corners, corners[0]]
    draw.line(ring, fill=EDGE, width=int(width + 2 * _edge(width)), joint="curve")
    for x, y in corners:
        _disc(draw, x, y, width / 2 + _edge(width), EDGE)
    draw.polygon(corners, fill=colour)
    draw.line(ring, fill=colour, width=int(width), joint="curve")
    for x, y in corners:
        _disc(draw, x, y, width / 2, colour)


def _finger(draw, joints: list, colours: list, width: float, edge: tuple, nail: bool) -> None:
    """A finger: an outlined capsule per bone, each shaded by its depth, round at the joints; a nail at the tip
    when the back of the hand faces the camera."""
    for (x0, y0), (x1, y1) in zip(joints, joints[1:]):
        draw.line((x0, y0, x1, y1), fill=edge, width=int(width + 2 * _edge(width)))
    for x, y in joints[1:]:
        _disc(draw, x, y, width / 2 + _edge(width), edge)
    for ((x0, y0), (x1, y1)), colour in zip(zip(joints, joints[1:]), colours[1:]):
        draw.line((x0, y0, x1, y1), fill=colour, width=int(width))
    for (x, y), colour in zip(joints[1:], colours[1:]):
        _disc(draw, x, y, width / 2, colour)
    if nail:
        (x0, y0), (x1, y1) = joints[-2], joints[-1]
        length = max(float(np.hypot(x1 - x0, y1 - y0)), 1e-6)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        cx, cy = x1 - ux * width * 0.3, y1 - uy * width * 0.3
        _disc(draw, cx, cy, width * 0.26, NAIL)


def _arrow(draw, path: list, colour: tuple, width: float) -> None:
    """A polyline with an arrowhead at its end."""
    draw.line(path, fill=colour, width=max(int(width), 2), joint="curve")
    (x0, y0), (x1, y1) = path[-2], path[-1]
    length = max(float(np.hypot(x1 - x0, y1 - y0)), 1e-6)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    head = width * 4
    left = (x1 - ux * head - uy * head * 0.6, y1 - uy * head + ux * head * 0.6)
    right = (x1 - ux * head + uy * head * 0.6, y1 - uy * head - ux * head * 0.6)
    draw.polygon([(x1 + ux * width, y1 + uy * width), left, right], fill=colour)


def _edge(width: float) -> float:
    return max(width * 0.09, 2.0)


def _disc(draw, x: float, y: float, radius: float, colour: tuple) -> None:
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
