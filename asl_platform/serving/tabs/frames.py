"""What the tabs answer with: a frame (a photo or webcam frame through the serving backend, or a hand the
page found through the landmark model), the session's calibration profile, and the hand drawn over a photo."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asl_platform.model.calibration import Calibration
from asl_platform.serving.backends import Prediction
from asl_platform.serving.calibration import checked_calibration
from asl_platform.serving.landmarks import hand_block, landmark_row, read_hand
from asl_platform.serving.protocol import ApiError, top_predictions

if TYPE_CHECKING:
    from asl_platform.serving.backends import Backend


@dataclass
class Frame:
    """One classified image: the top-k ``{label: probability}`` and the prediction itself."""

    top: dict[str, float]
    prediction: Prediction

    @property
    def hand(self) -> dict | None:
        """The hand block (None from an image-only model)."""
        return self.prediction.hand

    @property
    def calibrated(self) -> bool:
        """Whether the person's calibration answered."""
        return self.prediction.calibrated


async def classify_frame(backend: Backend, data: bytes, k: int, profile: Profile | None = None) -> Frame:
    """An image through the serving backend (the same decoding, limits and batching as ``POST /predict``,
    on the model replicas), with the session's calibration profile when there is one."""
    import gradio as gr

    (result,) = await backend.classify([data], profile.calibration if profile else None)
    if isinstance(result, ApiError):
        raise gr.Error(result.message)
    top = {p["label"]: p["probability"] for p in top_predictions(result.probabilities, backend.info["classes"], k)}
    return Frame(top, result)


async def classify_with_hand(backend: Backend, path: str, k: int, profile: Profile | None = None) -> Frame:
    return await classify_frame(backend, await asyncio.to_thread(Path(path).read_bytes), k, profile)


@dataclass
class LiveHand:
    """One frame's hand as the page found it (``static/live.js``): its number, landmarks (None: no hand)."""

    seq: int
    landmarks: object  # np.ndarray (21, 3) in pixels, or None
    handedness: str

    @classmethod
    def read(cls, message: str | None) -> LiveHand | None:
        """The page's JSON, checked like POST /v1/landmarks' body; None for anything else (never trusted)."""
        try:
            document = json.loads(message or "")
            seq = document.pop("seq")
            points, handedness = read_hand(document)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, ApiError):
            return None
        return cls(seq, points, handedness) if isinstance(seq, int) else None


async def classify_live_hand(backend: Backend, hand: LiveHand, k: int, profile: Profile | None = None) -> Frame | None:
    """A hand found in the page through the landmark model (the path of POST /v1/landmarks, batched on the model
    replicas); no hand is ``nothing`` (None for a model without that class: nothing to answer)."""
    import gradio as gr

    classes = backend.info["classes"]
    if hand.landmarks is None:
        if "nothing" not in classes:
            return None
        probabilities = np.zeros(len(classes), np.float32)
        probabilities[classes.index("nothing")] = 1.0
        result = Prediction(probabilities, source="live")
    else:
        (result,) = await backend.classify_landmarks([landmark_row(hand.landmarks, hand.handedness)],
                                                     profile.calibration if profile else None)
        if isinstance(result, ApiError):
            raise gr.Error(result.message)
    top = {p["label"]: p["probability"] for p in top_predictions(result.probabilities, classes, k)}
    return Frame(top, result._replace(hand=hand_block(hand.landmarks, hand.handedness)))


@dataclass
class Profile:
    """The session's calibration profile: its JSON (what is downloaded and uploaded) and, checked against
    the model, what the model reads. It lives in the page's session, in memory: never written to disk."""

    document: dict
    calibration: Calibration
    report: str = ""

    @classmethod
    def of(cls, document: dict, info: dict, report: str = "") -> Profile:
        return cls(document, checked_calibration(document, info), report)


def overlay(path: str, hand: dict | None):
    """The photo with the hand's skeleton and box drawn on it; None (nothing shown) without a hand block."""
    if hand is None:
        return None
    from PIL import Image, ImageOps

    from asl_platform.hands.draw import draw_hand

    with Image.open(path) as image:
        return draw_hand(ImageOps.exif_transpose(image), hand)
