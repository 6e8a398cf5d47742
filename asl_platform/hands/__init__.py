"""Hands, below the model layer: MediaPipe detection (``detect``), the landmark model's input rows and
the per-image table (``rows``), the landmark features the landmark model is built on (``features``),
each letter's typical hand (``shapes``) and drawing a hand (``draw``). The stage that runs detection
over a dataset and caches it is ``stages.hands``."""

from asl_platform.hands.detect import DetectionSettings, Hand, HandDetector, no_hand_json
from asl_platform.hands.rows import HandTable, hand_rows, landmark_inputs

__all__ = ["DetectionSettings", "Hand", "HandDetector", "HandTable", "hand_rows", "landmark_inputs", "no_hand_json"]
