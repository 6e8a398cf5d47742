"""Landmark features that carry over to new signers, cameras and hands, as torch modules saved
with the landmark model (so serving computes exactly what training did).

``LandmarkFeatures`` makes the 21 MediaPipe landmarks invariant to where the hand is (wrist at the
origin), how big it is (divided by the palm size) and which hand signs (left hands mirrored to
right ones), then describes the shape by the normalised 3-D points, every pairwise distance and
the bend at each finger joint. It is *not* invariant to rotation: some letters differ mainly by
orientation (H/U, G/Q, K/P). ``LandmarkAugment`` (training only, like dropout) models new
viewpoints and hands instead: a random 3-D rotation about the wrist, per-axis stretch and jitter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asl_platform.hands.rows import NUM_LANDMARKS

PALM = (5, 9, 13, 17)  # index, middle, ring and little finger MCP joints
FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))
_PAIRS = torch.triu_indices(NUM_LANDMARKS, NUM_LANDMARKS, offset=1)
FEATURE_DIM = (NUM_LANDMARKS - 1) * 3 + _PAIRS.shape[1] + 3 * len(FINGERS)


def canonical_points(inputs: torch.Tensor) -> torch.Tensor:
    """(N, 64) raw rows -> (N, 21, 3): right-hand frame, wrist at the origin, palm size 1."""
    points = inputs[:, :NUM_LANDMARKS * 3].reshape(-1, NUM_LANDMARKS, 3)
    mirror = torch.where(inputs[:, -1:] > 0.5, 1.0, -1.0)  # MediaPipe's "Left" becomes a right hand
    points = torch.cat([points[..., :1] * mirror[:, :, None], points[..., 1:]], dim=-1)
    points = points - points[:, :1]
    palm = points[:, PALM].norm(dim=-1).mean(dim=1).clamp_min(1e-6)
    return points / palm[:, None, None]


def shape_features(points: torch.Tensor) -> torch.Tensor:
    """(N, 21, 3) canonical points -> (N, FEATURE_DIM): coordinates, pairwise distances, joint bends."""
    distances = (points[:, _PAIRS[0]] - points[:, _PAIRS[1]]).norm(dim=-1)
    bends = []
    for finger in FINGERS:
        chain = (0, *finger)
        for a, b, c in zip(chain, chain[1:], chain[2:]):
            bends.append(nn.functional.cosine_similarity(points[:, b] - points[:, a], points[:, c] - points[:, b], dim=-1))
    return torch.cat([points[:, 1:].flatten(1), distances, torch.stack(bends, dim=1)], dim=1)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) roll (about the camera axis), yaw, pitch in radians -> (N, 3, 3) rotation matrices."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    roll = torch.stack([cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0], zero, zero, zero, one], 1).view(-1, 3, 3)
    yaw = torch.stack([cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1).view(-1, 3, 3)
    pitch = torch.stack([one, zero, zero, zero, cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2]], 1).view(-1, 3, 3)
    return roll @ yaw @ pitch


class LandmarkAugment(nn.Module):
    """Random viewpoint and hand changes on canonical points, in training mode only."""

    def __init__(self, roll_deg: float = 15.0, tilt_deg: float = 25.0, stretch: float = 0.1, jitter: float = 0.02):
        super().__init__()
        self.roll, self.tilt = math.radians(roll_deg), math.radians(tilt_deg)
        self.stretch, self.jitter = stretch, jitter

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return points
        n = points.shape[0]
        limits = torch.tensor([self.roll, self.tilt, self.tilt], device=points.device)
        angles = (torch.rand(n, 3, device=points.device) * 2 - 1) * limits
        points = points @ _rotation(angles).transpose(1, 2)
        points = points * (1 + (torch.rand(n, 1, 3, device=points.device) * 2 - 1) * self.stretch)
        return points + torch.randn_like(points) * self.jitter


class LandmarkFeatures(nn.Module):
    """Raw landmark rows -> invariant shape features (with augmentation while training)."""

    def __init__(self, augment: LandmarkAugment | None = None):
        super().__init__()
        self.augment = augment or LandmarkAugment(0, 0, 0, 0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return shape_features(self.augment(canonical_points(inputs)))
