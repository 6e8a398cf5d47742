"""The hands a learner copies and compares (``hands.figure``): a letter's typical hand, the learner's own hand
beside it with the finger to move, and which way the palm faces; mirrored for a left-handed learner."""

from __future__ import annotations

import numpy as np

from asl_platform.hands.figure import palm_facing
from asl_platform.hands.shapes import DESCRIPTIONS, MOTION_LETTERS, HandShape, canonical, draw_learner, draw_shape

LEFT_HANDED = "I sign with my left hand (mirror the pictures)"


def target_picture(shapes: dict[str, HandShape], letter: str | None, left_handed: bool = False):
    """``letter``'s typical hand drawn (with J's and Z's motion), or None where the model has none."""
    if letter not in shapes:
        return None
    return draw_shape(shapes[letter], letter=letter, mirror=left_handed)


def learner_picture(hand: dict | None, target: HandShape | None, left_handed: bool = False):
    """The learner's hand as found (a hand block), drawn like the target's, with an arrow on each finger to move;
    None without a hand."""
    if not hand or not hand.get("found"):
        return None
    points = canonical(np.asarray(hand["landmarks"], np.float32), hand["handedness"])
    return draw_learner(points, target, mirror=left_handed)


def facing(shapes: dict[str, HandShape], letter: str | None) -> str:
    """Which way the letter's palm faces, as a line for the page ('' without a shape)."""
    return f"*{palm_facing(shapes[letter].points).capitalize()}.*" if letter in shapes else ""


def how_to_sign(shapes: dict[str, HandShape], letter: str) -> list[str]:
    """What the page says of a letter beside its picture: its handshape in words, which way the palm faces, and for
    J and Z the motion (a camera frame sees one moment of it, so the final handshape counts too)."""
    lines = [DESCRIPTIONS.get(letter, ""), facing(shapes, letter)]
    if letter in MOTION_LETTERS:
        finals = " or ".join(MOTION_LETTERS[letter])
        lines.append(f"*{letter} is a motion letter (the blue arrow): a camera frame sees one moment of it, so its "
                     f"final handshape counts too (recognised as {letter} or {finals}).*")
    return [line for line in lines if line]
