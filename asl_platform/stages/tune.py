"""Stage tune: the ASHA search (``training.search``) over one model's hyperparameters, on the cached
features (or the images, or the landmark rows); writes the trial table, the best config and the curves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from asl_platform.config import Config
from asl_platform.stages.ingest import PreparedData, StageProgress
from asl_platform.training import recipe
from asl_platform.training.search import (
    format_table, plot_curves, run_search, searched_values, trial_histories, write_results,
)

logger = logging.getLogger(__name__)


class SearchOutcome(NamedTuple):
    best: Config
    rows: list[dict]  # a trial each, best first (trials.json)
    best_config_path: Path
    histories: dict[str, list[dict]]  # each trial's reported metrics per epoch, by trial id


def search(cfg: Config, prepared: PreparedData, progress: StageProgress, run_dir: Path,
           resume: bool = False, kind: recipe.Kind | None = None) -> SearchOutcome:
    """Stage tune: the ASHA search; writes trials.csv/json, best_config.yaml and curves.png (under
    ``tune/``, or ``tune-landmarks/`` for the landmark model)."""
    kind = kind or ("images" if cfg.tune.mode == "images" else "features")
    name = "tune-landmarks" if kind == "landmarks" else "tune"
    what = "the landmark model" if kind == "landmarks" else f"the image model ({cfg.tune.mode} mode)"
    scored = "scored on held-out people" if prepared.people else "scored on the validation split"
    with progress.stage("tune", f"ASHA search, {cfg.tune.num_samples} trials, {what}, {scored}"):
        if kind == "images":
            data = {"kind": "images", "train_files": prepared.files("train"), "val_files": prepared.files("val")}
        else:
            arrays = prepared.landmarks if kind == "landmarks" else prepared.features
            data = {"kind": kind, "train": arrays("train"), "train_weights": prepared.source_weights("train", kind)}
            if prepared.people:  # every trial scored on people its models were not trained on
                data["folds"] = prepared.folds(kind)
            else:
                data["val"] = arrays("val")
        data["num_classes"] = len(prepared.index.classes)
        best, rows, results = run_search(data, cfg, name, resume=resume)
        best_config_path = write_results(rows, best, run_dir / name)
        plot_curves(results, run_dir / name / "curves.png")
        logger.info("trials (best first):\n%s", format_table(rows))
        logger.info("best hyperparameters: %s -> %s", searched_values(best.model_dump()), best_config_path)
    return SearchOutcome(best, rows, best_config_path, trial_histories(results))
