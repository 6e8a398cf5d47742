"""The landmark model: invariant hand-shape features (``asl_platform.hands.features``) followed by
the same two fully connected layers as the image model's head. Tiny (~100k parameters) and, unlike
pixels, what it sees is the same for a new signer in a new room."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from asl_platform.hands.features import FEATURE_DIM, LandmarkAugment, LandmarkFeatures
from asl_platform.model.classifier import build_head, probabilities

LANDMARK_WEIGHTS_FILE = "landmarks.safetensors"


class LandmarkClassifier(nn.Module):
    """(N, 64) raw landmark rows (see ``hands.landmark_inputs``) -> logits (N, classes)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout: float, augment: LandmarkAugment | None = None):
        super().__init__()
        self.features = LandmarkFeatures(augment)
        self.head = build_head(FEATURE_DIM, num_classes, hidden_size, dropout)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The hidden layer (after its ReLU): where personal calibration compares hands."""
        return self.head[1](self.head[0](self.features(inputs)))


def save_landmark_weights(model: LandmarkClassifier, directory) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / LANDMARK_WEIGHTS_FILE))


def landmark_probabilities(model: nn.Module, rows: np.ndarray, found: np.ndarray, num_classes: int) -> np.ndarray:
    """The landmark model's probabilities where a hand was found, zeros elsewhere (what the fusion
    rules take)."""
    out = np.zeros((len(rows), num_classes), np.float32)
    if np.any(found):
        out[found] = probabilities(model, rows[found], num_classes)
    return out
