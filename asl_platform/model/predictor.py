"""``Predictor``: a model folder loaded once, classifying images the way it was trained to see them
(the preprocessing recorded in its card). Evaluation, batch inference and serving all use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from asl_platform.data import normalize_batch, preprocess_images
from asl_platform.model.store import load_model_dir


class Predictor:
    def __init__(self, directory: str | Path, device: str = "cpu"):
        self.model, self.card = load_model_dir(directory)
        self.device = torch.device(device)
        self.model.to(self.device, memory_format=torch.channels_last)  # about 1.2x faster convolutions on CPU
        self.classes: list[str] = self.card.classes
        self.preprocessing = self.card.prep

    @torch.inference_mode()
    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NCHW batch -> class probabilities (N, C)."""
        images = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        logits = self.model(images)
        return torch.softmax(logits, dim=1).cpu().numpy()

    def predict_images(self, images: list) -> np.ndarray:
        return self.predict_arrays(preprocess_images(images, self.preprocessing))

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC batch at the model's input size (see ``resize_for_model``) -> probabilities."""
        return self.predict_arrays(normalize_batch(batch, self.preprocessing))
