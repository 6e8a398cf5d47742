"""Stage retrain: Ray Train retrains the best configuration of each model (the image head, or its last
stage + head, on the cached arrays; and for a hand-aware model the landmark model) on the training
split, early-stopped on the validation split."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from asl_platform.config import Config
from asl_platform.stages.ingest import PreparedData
from asl_platform.training import recipe
from asl_platform.training.trainer import TrainingResult, run_training


@dataclass
class Retrained:
    image: TrainingResult
    landmarks: TrainingResult | None  # a hand-aware run's landmark model


def retrain(best: Config, best_landmarks: Config | None, prepared: PreparedData, kind: recipe.Kind) -> Retrained:
    """Both models on the cached arrays; ``best_landmarks`` None: the image model alone."""
    # A unique name per invocation: a re-run must never pick up an old run's checkpoints.
    stamp = f"{datetime.now():%Y%m%d-%H%M%S-%f}"
    arrays = prepared.activations if kind == "activations" else prepared.features
    image = run_training(best, kind, len(prepared.index.classes), f"retrain-{stamp}",
                         arrays={"train": arrays("train"), "val": arrays("val")},
                         train_weights=prepared.source_weights("train"))
    landmarks = run_training(best_landmarks, "landmarks", len(prepared.index.classes), f"retrain-landmarks-{stamp}",
                             arrays={"train": prepared.landmarks("train"), "val": prepared.landmarks("val")},
                             train_weights=prepared.source_weights("train", "landmarks")) if best_landmarks else None
    return Retrained(image, landmarks)
