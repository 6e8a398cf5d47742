"""Where training batches come from. Each source yields ``(inputs, labels)`` tensors on the training
device for one epoch at a time, so ``loop.fit`` never needs to know which kind it is training on:

- ``ArrayBatches``: cached backbone features (N, D) or trunk activations (N, C, H, W, float16), in memory;
- ``ShardBatches``: a Ray Train worker's shard of the Ray Data image stream (decoded and augmented there);
- ``FileBatches``: image files decoded in-process (a full-image Tune trial, which has no dataset shard).
"""

from __future__ import annotations

import logging
import random
import warnings
from typing import Iterator

import numpy as np
import torch

from asl_platform.data.decode import Preprocessing, augmentation, preprocess_images
from asl_platform.data.people import Folds
from asl_platform.data.reading import load_image

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class ArrayBatches:
    """Rows of in-memory arrays; with ``shuffle`` a new order every epoch (seeded by ``seed`` and the
    epoch, so a resumed run draws what it would have drawn). With ``weights`` (one per row, training
    only) an epoch is as many rows drawn with replacement in proportion to them: e.g. every training
    folder weighing the same (``data.balance_sources``). ``noise`` > 0 multiplies each input
    channel by ``1 + noise * N(0, 1)``, drawn per example and channel: light augmentation for inputs
    that are cached activations. Inputs stay in their cached dtype until a batch is taken. ``rows``: only
    these rows of the arrays (one fold's, ``data.people``), without copying them; ``weights`` then has one
    entry per selected row."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 shuffle: bool = False, seed: int = 0, noise: float = 0.0, weights: np.ndarray | None = None,
                 rows: np.ndarray | None = None):
        with warnings.catch_warnings():  # arrays from the object store are read-only; they are only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.inputs = torch.from_numpy(inputs).to(device)  # shared with the object store, not copied
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()).to(device)
        self.rows = None if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64))
        self.batch_size, self.device, self.shuffle, self.seed, self.noise = batch_size, device, shuffle, seed, noise
        if weights is not None and (len(weights) != len(self) or not shuffle):
            raise ValueError("weights: one per row, and only for shuffled (training) batches")
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.labels) if self.rows is None else len(self.rows)

    def batches(self, epoch: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, len(self), replacement=True, generator=generator)
        else:
            order = torch.randperm(len(self), generator=generator) if self.shuffle else torch.arange(len(self))
        if self.rows is not None:
            order = self.rows[order]
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size].to(self.device)
            inputs = self.inputs[rows].float()
            if self.noise > 0:
                shape = inputs.shape[:2] + (1,) * (inputs.dim() - 2)
                inputs = inputs * (1 + self.noise * torch.randn(shape, generator=generator).to(self.device))
            if inputs.dim() == 4:  # activations: the layout the last stage is trained in (recipe.build_model)
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield inputs, self.labels[rows]


def member_sources(inputs: np.ndarray, labels: np.ndarray, folds: Folds, batch_size: int, device: torch.device, *,
                   seed: int = 0, noise: float = 0.0, weights: np.ndarray | None = None,
                   everyone: bool = True) -> tuple[list[ArrayBatches], list[ArrayBatches | None]]:
    """The training and validation sources of a run that chooses on held-out people (``loop.fit``'s members):
    with ``everyone``, first the model of every group (all rows, not scored: the one exported), then one member
    per fold of ``folds`` (trained on its rows, scored on its held-out group's)."""
    def training(rows: np.ndarray | None) -> ArrayBatches:
        return ArrayBatches(inputs, labels, batch_size, device, shuffle=True, seed=seed, noise=noise, rows=rows,
                            weights=None if weights is None else weights if rows is None else weights[rows])

    train, val = ([training(None)], [None]) if everyone else ([], [])
    for rows, held_out in zip(folds.train, folds.val):
        train.append(training(rows))
        val.append(ArrayBatches(inputs, labels, evaluation_batch_size(inputs), device, rows=held_out))
    return train, val


def evaluation_batch_size(inputs: np.ndarray) -> int:
    """Scoring needs no gradients: large batches, smaller for activations (4-D) than for features."""
    return 1024 if inputs.ndim == 2 else 256


class ShardBatches:
    """A Ray Train dataset shard of decoded images (columns ``image``, ``label``)."""

    def __init__(self, shard, batch_size: int, device: torch.device, shuffle: bool = False):
        self.shard, self.batch_size, self.device, self.shuffle = shard, batch_size, device, shuffle

    def batches(self, epoch: int) -> Iterator[Batch]:
        buffer = {"local_shuffle_buffer_size": 4 * self.batch_size} if self.shuffle else {}
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, device=self.device, **buffer):
            yield batch["image"], batch["label"]


class FileBatches:
    """Image files read, decoded (and augmented) in this process. A file that cannot be read is
    skipped: the ingest stage has already reported it by path."""

    def __init__(self, paths: list[str], labels: list[int], prep: Preprocessing, batch_size: int,
                 device: torch.device, shuffle: bool = False, augment: bool = False, seed: int = 0):
        self.paths, self.labels, self.prep = list(paths), list(labels), prep
        self.batch_size, self.device, self.shuffle, self.seed = batch_size, device, shuffle, seed
        self.transform = augmentation(prep.image_size) if augment else None

    def batches(self, epoch: int) -> Iterator[Batch]:
        order = list(range(len(self.paths)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        for start in range(0, len(order), self.batch_size):
            images, labels = [], []
            for i in order[start:start + self.batch_size]:
                try:
                    image = load_image(self.paths[i], draft_size=self.prep.image_size)
                except Exception:  # any failure on one file skips that file only (reported at ingest)
                    continue
                images.append(self.transform(image) if self.transform else image)
                labels.append(self.labels[i])
            if images:
                yield (torch.from_numpy(preprocess_images(images, self.prep)).to(self.device),
                       torch.tensor(labels, device=self.device))
