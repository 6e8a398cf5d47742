"""asl_platform.hands.detect: MediaPipe Hands on real photos, and where its coordinates land."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import alphabet_photos
from PIL import Image

from asl_platform.hands import DetectionSettings, HandDetector, no_hand_json
from asl_platform.hands.draw import draw_hand

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def detector():
    detector = HandDetector()
    yield detector
    detector.close()


def test_hands_are_found_in_real_photos_with_21_landmarks_inside_the_box(detector, asl_alphabet):
    photos = [p for label in ("A", "B", "L", "V", "Y") for p in alphabet_photos(asl_alphabet, label, 4)]
    hands = [detector.detect(np.asarray(Image.open(p).convert("RGB"))) for p in photos]
    found = [h for h in hands if h is not None]
    assert len(found) >= 0.7 * len(photos), f"hand found in only {len(found)} of {len(photos)} photos"
    for hand in found:
        assert hand.landmarks.shape == (21, 3) and hand.world.shape == (21, 3)
        assert hand.handedness in ("Left", "Right") and 0.5 <= hand.score <= 1.0
        x0, y0, x1, y1 = hand.box
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200  # pixels of the 200x200 photo
        inside = hand.landmarks[:, :2]
        assert np.all(inside >= -25) and np.all(inside <= 225)  # a finger may leave the frame a little
        block = hand.to_json()
        assert block["found"] and len(block["landmarks"]) == 21 and len(block["box"]) == 4


def test_no_hand_in_a_blank_or_noise_image(detector):
    assert detector.detect(np.full((200, 200, 3), 127, np.uint8)) is None
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) is None
    assert no_hand_json()["found"] is False


def test_coordinates_follow_the_original_image_when_it_is_shrunk_or_shifted(detector, asl_alphabet):
    photo = next(p for p in alphabet_photos(asl_alphabet, "B", 20)
                 if detector.detect(np.asarray(Image.open(p).convert("RGB"))) is not None)
    image = np.asarray(Image.open(photo).convert("RGB"))
    hand = detector.detect(image)
    # The same photo, four times larger (shrunk back to the detector's size) and pasted into a wider frame.
    big = np.asarray(Image.fromarray(image).resize((800, 800), Image.BILINEAR))
    canvas = np.pad(big, ((0, 0), (300, 300), (0, 0)), mode="edge")
    moved = detector.detect(canvas)
    assert moved is not None
    expected = hand.landmarks[:, :2] * 4 + np.array([300, 0])
    assert np.median(np.abs(moved.landmarks[:, :2] - expected)) < 12  # pixels of the 1400x800 frame


def test_the_paddings_are_tried_in_order_until_a_hand_is_found(asl_alphabet, monkeypatch):
    photos = [p for label in ("M", "N", "S", "T", "B") for p in alphabet_photos(asl_alphabet, label, 6)]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    detector = HandDetector(DetectionSettings(paddings=(0.25, 0.0)))
    tried: list[list[tuple[float, bool]]] = []
    original = HandDetector._detect_padded

    def spy(self, image, padding, scale, size):
        hand = original(self, image, padding, scale, size)
        tried[-1].append((padding, hand is not None))
        return hand

    monkeypatch.setattr(HandDetector, "_detect_padded", spy)
    results = []
    for image in images:
        tried.append([])
        results.append(detector.detect(image))
    detector.close()
    for hand, attempts in zip(results, tried):
        assert attempts[0][0] == 0.25  # the configured order
        if attempts[0][1]:
            assert len(attempts) == 1 and hand is not None  # found: not tried again
        else:
            assert [p for p, _ in attempts] == [0.25, 0.0] and (hand is not None) == attempts[1][1]
    assert any(len(a) == 1 for a in tried) and any(len(a) == 2 for a in tried)  # both cases happened
    settings = DetectionSettings(paddings=(0.5, 0.0), min_confidence=0.4)
    assert DetectionSettings.from_dict(settings.to_dict()) == settings


def test_the_skeleton_is_drawn_only_where_a_hand_was_found(detector, asl_alphabet):
    photo = alphabet_photos(asl_alphabet, "L", 1)[0]
    image = Image.open(photo).convert("RGB")
    hand = detector.detect(np.asarray(image))
    assert hand is not None
    drawn = np.asarray(draw_hand(image, hand.to_json()), dtype=np.int16)
    changed = np.any(drawn != np.asarray(image, dtype=np.int16), axis=2)
    assert changed.mean() > 0.01  # bones, joints and box
    x0, y0, x1, y1 = (int(v) for v in hand.box)
    assert changed[y0:y1 + 1, x0:x1 + 1].sum() > 0.9 * changed.sum() - 4 * (x1 - x0 + y1 - y0)
    assert np.array_equal(np.asarray(draw_hand(image, no_hand_json())), np.asarray(image))
