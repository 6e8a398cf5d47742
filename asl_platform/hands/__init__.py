"""Hand landmarks: MediaPipe detection (``detect``), the Ray Data stage that caches it (``stage``)
and the landmark features the landmark model is built on (``features``)."""

from asl_platform.hands.detect import DetectionSettings, Hand, HandDetector, no_hand_json
from asl_platform.hands.stage import HandTable, detect_hands, landmark_inputs

__all__ = ["DetectionSettings", "Hand", "HandDetector", "HandTable", "detect_hands", "landmark_inputs", "no_hand_json"]
