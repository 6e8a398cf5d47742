"""Stage retrain: Ray Train retrains the best configuration of each model (the image head, or its last
stage + head, on the cached arrays; and for a hand-aware model the landmark model). Choosing on held-out
people (``data.people``): on every group, in lockstep with one model per held-out group, early-stopped on
how those do on their groups; else on the training split, early-stopped on the validation split."""

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
    image = _train(best, kind, prepared, f"retrain-{stamp}")
    landmarks = _train(best_landmarks, "landmarks", prepared, f"retrain-landmarks-{stamp}") if best_landmarks else None
    return Retrained(image, landmarks)


def _train(cfg: Config, kind: recipe.Kind, prepared: PreparedData, name: str) -> TrainingResult:
    """One model on its cached arrays: early-stopped on the validation split, or, choosing on held-out people,
    trained on every group in lockstep with one model per held-out group, stopped on those."""
    arrays = {"activations": prepared.activations, "landmarks": prepared.landmarks}.get(kind, prepared.features)
    rows_of = "landmarks" if kind == "landmarks" else "features"
    split = {"train": arrays("train")} if prepared.people else {"train": arrays("train"), "val": arrays("val")}
    return run_training(cfg, kind, len(prepared.index.classes), name, arrays=split,
                        train_weights=prepared.source_weights("train", rows_of),
                        folds=prepared.folds(rows_of) if prepared.people else None)
