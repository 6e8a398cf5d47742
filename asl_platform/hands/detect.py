"""One hand per image with MediaPipe Hands: 21 landmarks, handedness, score and box.

MediaPipe 0.10.21 ships its palm-detection and hand-landmark models inside the wheel, so this works
offline (see docs/architecture.md, "Libraries and why"). Detection runs on the frame padded with its own border
(``paddings``): hands cut by the image edge (cropped-hand photos, close webcam shots) are found far
more often when the palm detector sees some margin around them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from asl_platform.config import HandsConfig

logger = logging.getLogger(__name__)


# Longest side the detector is given: MediaPipe resizes to 192/224 px internally, so larger frames
# only cost decoding and copying.
DETECT_MAX_SIDE = 640


@dataclass(frozen=True)
class DetectionSettings:
    """What decides whether and where a hand is found; recorded with the model and in cache keys."""

    # Border fractions tried in order until a hand is found: 0.25 finds hands cut by the frame edge,
    # 0 finds some that a wide margin makes too small (asl-alphabet sample: 78% -> 86% found).
    paddings: tuple[float, ...] = (0.25, 0.0)
    min_confidence: float = 0.5
    model_complexity: int = 1

    def to_dict(self) -> dict:
        return {**asdict(self), "paddings": list(self.paddings)}

    @classmethod
    def of(cls, section: HandsConfig) -> DetectionSettings:
        """The detection keys of the config's ``hands`` section (the rest trains the landmark model)."""
        return cls(tuple(section.paddings), section.min_confidence, section.model_complexity)

    @classmethod
    def from_dict(cls, values: dict) -> DetectionSettings:
        return cls(tuple(values["paddings"]), values["min_confidence"], values["model_complexity"])


@dataclass
class Hand:
    """A detected hand in the pixels of the image given to ``detect`` (x right, y down; z is
    MediaPipe's relative depth in the same units as x; ``scaled`` maps them to another size of that
    image). ``world`` is MediaPipe's metric 3-D estimate (metres, hand-centred)."""

    landmarks: np.ndarray  # (21, 3) float32
    world: np.ndarray  # (21, 3) float32
    handedness: str  # "Left" or "Right", as MediaPipe labels it
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, clipped to the image

    def scaled(self, x: float, y: float, size: tuple[int, int]) -> Hand:
        """The same hand in an image ``x`` times wider and ``y`` times taller, of ``size`` (w, h)
        (e.g. the upload at its full size when the detector saw a reduced decode)."""
        factor = np.asarray([x, y, x], dtype=np.float32)
        x0, y0, x1, y1 = self.box
        box = (max(0.0, x0 * x), max(0.0, y0 * y), min(float(size[0]), x1 * x), min(float(size[1]), y1 * y))
        return Hand(self.landmarks * factor, self.world, self.handedness, self.score, box)

    def to_json(self) -> dict:
        return {
            "found": True, "handedness": self.handedness, "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.box],
            "landmarks": [[round(float(v), 2) for v in point] for point in self.landmarks],
        }


def no_hand_json() -> dict:
    return {"found": False, "handedness": None, "score": None, "box": None, "landmarks": None}


def mediapipe_version() -> str:
    import mediapipe

    return mediapipe.__version__


class HandDetector:
    """A MediaPipe Hands graph in static-image mode. Not thread-safe: one per Ray Data actor, and
    callers that share one across threads (``Predictor``) hold a lock around ``detect``."""

    def __init__(self, settings: DetectionSettings = DetectionSettings()):
        from mediapipe.python.solutions import hands  # lazy: only where detection runs

        self.settings = settings
        self._hands = hands.Hands(
            static_image_mode=True, max_num_hands=1, model_complexity=settings.model_complexity,
            min_detection_confidence=settings.min_confidence,
        )

    def detect(self, image: np.ndarray) -> Hand | None:
        """RGB uint8 (H, W, 3) -> the most confident hand, or None."""
        height, width = image.shape[:2]
        if max(height, width) > DETECT_MAX_SIDE:
            from PIL import Image

            shrink = DETECT_MAX_SIDE / max(height, width)
            image = np.asarray(Image.fromarray(image).resize(
                (max(1, round(width * shrink)), max(1, round(height * shrink))), Image.BILINEAR))
        scale = (image.shape[1] / width, image.shape[0] / height)  # per axis: rounding differs
        for padding in self.settings.paddings:
            hand = self._detect_padded(image, padding, scale, (width, height))
            if hand is not None:
                return hand
        return None

    def _detect_padded(self, image: np.ndarray, padding: float, scale: tuple[float, float],
                       size: tuple[int, int]) -> Hand | None:
        width, height = size
        pad_y, pad_x = (round(padding * side) for side in image.shape[:2])
        padded = np.pad(image, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="edge") if pad_y or pad_x else image
        result = self._hands.process(np.ascontiguousarray(padded))
        if not result.multi_hand_landmarks:
            return None
        padded_h, padded_w = padded.shape[:2]
        points = np.asarray([(p.x, p.y, p.z) for p in result.multi_hand_landmarks[0].landmark], dtype=np.float32)
        points[:, 0] = (points[:, 0] * padded_w - pad_x) / scale[0]
        points[:, 1] = (points[:, 1] * padded_h - pad_y) / scale[1]
        points[:, 2] = points[:, 2] * padded_w / scale[0]
        world = np.asarray([(p.x, p.y, p.z) for p in result.multi_hand_world_landmarks[0].landmark], dtype=np.float32)
        label = result.multi_handedness[0].classification[0]
        x0, y0 = points[:, :2].min(axis=0)
        x1, y1 = points[:, :2].max(axis=0)
        box = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
        return Hand(points, world, label.label, float(label.score), tuple(float(v) for v in box))

    def close(self) -> None:
        self._hands.close()
