"""asl_platform.hands.features: what the landmark model sees does not change with where the hand
is, how large it is, or which hand signs (mirrored, with MediaPipe's handedness), and the training
augmentation only acts while training. Seeded random hands stand in for a property-test library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asl_platform.hands import landmark_inputs
from asl_platform.hands.features import FEATURE_DIM, LandmarkAugment, LandmarkFeatures
from asl_platform.hands.rows import INPUT_DIM

SEEDS = range(25)


def random_hand(seed: int) -> np.ndarray:
    """A plausible hand: wrist, then points spread around it, in pixels."""
    rng = np.random.default_rng(seed)
    points = rng.normal(0, 30, (21, 3)).astype(np.float32)
    points[0] = 0
    points[[5, 9, 13, 17], 1] -= 60  # MCP joints above the wrist: a palm of size ~60 px
    return points + np.array([rng.uniform(50, 500), rng.uniform(50, 400), 0], np.float32)


def features(points: np.ndarray, right: float) -> np.ndarray:
    with torch.inference_mode():
        return LandmarkFeatures().eval()(torch.from_numpy(landmark_inputs(points, [right]))).numpy()[0]


def test_shapes():
    assert landmark_inputs(random_hand(0), [1.0]).shape == (1, INPUT_DIM)
    assert features(random_hand(0), 1.0).shape == (FEATURE_DIM,)


@pytest.mark.parametrize("seed", SEEDS)
def test_unchanged_by_translation_and_scale(seed):
    rng = np.random.default_rng(1000 + seed)
    points = random_hand(seed)
    moved = points * rng.uniform(0.2, 5.0) + np.array([rng.uniform(-300, 300), rng.uniform(-300, 300), rng.uniform(-5, 5)],
                                                      np.float32)
    np.testing.assert_allclose(features(moved, 1.0), features(points, 1.0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_mirrored_hand_with_the_other_handedness_reads_the_same(seed):
    points = random_hand(seed)
    mirrored = points * np.array([-1, 1, 1], np.float32) + np.array([640, 0, 0], np.float32)
    np.testing.assert_allclose(features(mirrored, 0.0), features(points, 1.0), rtol=1e-3, atol=1e-4)
    # ... while the same mirror image with the same handedness is another shape.
    assert not np.allclose(features(mirrored, 1.0), features(points, 1.0), atol=1e-2)


def test_rotation_changes_the_features():
    """Not rotation-invariant on purpose: H and U differ mainly by orientation."""
    points = random_hand(3)
    angle = np.deg2rad(90)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], np.float32)
    assert not np.allclose(features(points @ rotation.T, 1.0), features(points, 1.0), atol=1e-2)


def test_augmentation_acts_only_while_training_and_keeps_the_hand_a_hand():
    rows = torch.from_numpy(np.concatenate([landmark_inputs(random_hand(s), [1.0]) for s in range(64)]))
    module = LandmarkFeatures(LandmarkAugment(roll_deg=15, tilt_deg=25, stretch=0.1, jitter=0.02))
    module.eval()
    with torch.inference_mode():
        assert torch.equal(module(rows), module(rows))
        plain = module(rows)
        module.train()
        augmented, again = module(rows), module(rows)
    assert not torch.allclose(augmented, plain) and not torch.allclose(augmented, again)
    # A bounded change: distances between joints change by ~10-20%, not beyond recognition.
    change = (augmented - plain).abs().mean() / plain.abs().mean()
    assert 0.01 < float(change) < 0.5
