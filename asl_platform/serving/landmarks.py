"""``POST /v1/landmarks``' body: a hand found elsewhere (the demo's page runs MediaPipe's hand
landmarker itself), checked and turned into the landmark model's input row.

The coordinates are those of the ``hand`` block that ``/predict`` answers with: pixels of the image,
x right, y down, z MediaPipe's relative depth in the units of x. A browser's MediaPipe gives them
normalised to the frame (x, z by its width, y by its height): multiply x and z by the width and y by
the height (``static/live.js`` does). Sending ``/predict``'s hand block back gives ``/predict``'s hand.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from asl_platform.hands.detect import no_hand_json
from asl_platform.hands.rows import NUM_LANDMARKS, landmark_inputs
from asl_platform.serving.protocol import ApiError

MAX_COORDINATE = 1e6  # the calibration profile's bound on a landmark coordinate, in pixels
FIELDS = ("landmarks", "handedness", "profile")


def landmarks_body(profile: dict | None, no_hand: bool) -> dict:
    """``openapi_extra`` of /v1/landmarks: one hand as JSON (or, with ``no_hand``, none: a model with a
    ``nothing`` class answers a frame without a hand), with the person's profile or without."""
    number = {"type": "number", "minimum": -MAX_COORDINATE, "maximum": MAX_COORDINATE}
    point = {"type": "array", "items": number, "minItems": 3, "maxItems": 3}
    properties: dict[str, Any] = {
        "landmarks": {"anyOf": [
            {"type": "array", "items": point, "minItems": NUM_LANDMARKS, "maxItems": NUM_LANDMARKS,
             "description": "MediaPipe's 21 hand landmarks (x, y, z) in pixels of the image: x right, y down, z "
                            "relative depth in the units of x (a normalised landmark times the frame's width for x "
                            "and z, its height for y); the hand block /predict answers with has them"}]
            + ([{"type": "null", "description": "no hand in the frame: the answer is 'nothing'"}] if no_hand else [])},
        "handedness": {"enum": ["Left", "Right"], "description": "as MediaPipe labels the hand"},
    }
    if profile is not None:
        properties["profile"] = {"anyOf": [profile, {"type": "null", "description": "no profile"}]}
    schema = {"type": "object", "required": ["landmarks", "handedness"], "additionalProperties": False,
              "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def read_hand(document: Any) -> tuple[np.ndarray | None, str]:
    """The body -> the (21, 3) landmarks (None: no hand) and the handedness; 400 for anything else."""
    if not isinstance(document, dict) or "landmarks" not in document or "handedness" not in document:
        raise ApiError(400, "invalid_request", 'JSON body must be an object with "landmarks" (21 points [x, y, z], or '
                       'null) and "handedness" ("Left" or "Right")')
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        raise ApiError(400, "invalid_request", f"unknown fields {unknown}: the body holds {', '.join(FIELDS)}")
    handedness, points = document["handedness"], document["landmarks"]
    if handedness not in ("Left", "Right"):
        raise ApiError(400, "invalid_request", '"handedness" must be "Left" or "Right"')
    if points is None:
        return None, handedness
    if not (isinstance(points, list) and len(points) == NUM_LANDMARKS
            and all(isinstance(p, list) and len(p) == 3 for p in points)):
        raise ApiError(400, "invalid_landmarks", f'"landmarks" must be {NUM_LANDMARKS} points, each [x, y, z]')
    values = [v for point in points for v in point]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and abs(v) <= MAX_COORDINATE for v in values):
        raise ApiError(400, "invalid_landmarks", f"each landmark coordinate must be a finite number within "
                       f"±{MAX_COORDINATE:g} (pixels)")
    return np.asarray(points, np.float32), handedness


def landmark_row(points: np.ndarray, handedness: str) -> np.ndarray:
    """The landmark model's input row (``hands.rows.landmark_inputs``): the points, then 1 for a right hand."""
    return landmark_inputs(points, [1.0 if handedness == "Right" else 0.0])[0]


def hand_block(points: np.ndarray | None, handedness: str) -> dict:
    """The answer's hand block, as /predict gives it (no detection score: the detector ran elsewhere)."""
    if points is None:
        return no_hand_json()
    (x0, y0), (x1, y1) = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    return {"found": True, "handedness": handedness, "score": None,
            "box": [round(float(v), 1) for v in (x0, y0, x1, y1)],
            "landmarks": [[round(float(v), 2) for v in point] for point in points]}
