"""Hyperparameter search: parallel ASHA trials with Ray Tune, each training the head on cached features.

Trials are cheap because the backbone never runs here: the feature arrays go into Ray's object
store once (``tune.with_parameters``) and every trial trains only the two-layer head.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch

from asl_platform.config import Config, TuneConfig
from asl_platform.model import build_head
from asl_platform.train import HeadHyperparams, fit_head, storage_uri

logger = logging.getLogger(__name__)

SEARCHED = ("lr", "eps", "weight_decay", "batch_size", "hidden_size", "dropout")


def search_space(cfg: TuneConfig) -> dict:
    """The original AdamW search space, plus the head's hidden size and dropout; bounds from config."""
    from ray import tune

    return {
        "lr": tune.loguniform(*cfg.lr),
        "eps": tune.loguniform(*cfg.eps),
        "weight_decay": tune.loguniform(*cfg.weight_decay),
        "batch_size": tune.choice(list(cfg.batch_size)),
        "hidden_size": tune.choice(list(cfg.hidden_size)),
        "dropout": tune.uniform(*cfg.dropout),
    }


def _trial(config: dict, data: dict) -> None:
    """One Tune trial: train a fresh head and report validation loss/accuracy every epoch."""
    from ray import tune

    torch.set_num_threads(max(1, int(data["cpus_per_trial"])))
    torch.manual_seed(data["seed"])
    hp = HeadHyperparams.from_mapping(config)
    device = "cuda" if data["gpus_per_trial"] > 0 and torch.cuda.is_available() else "cpu"
    head = build_head(data["train"][0].shape[1], data["num_classes"], hp.hidden_size, hp.dropout).to(device)
    for metrics in fit_head(head, data["train"], data["val"], hp, data["max_epochs"], seed=data["seed"]):
        tune.report(metrics)


def run_search(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    cfg: TuneConfig,
    storage_path: str,
    name: str,
) -> tuple[HeadHyperparams, list[dict]]:
    """Run the ASHA search; return the best hyperparameters and one summary row per trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    data = {
        "train": train, "val": val, "num_classes": num_classes, "max_epochs": cfg.max_epochs,
        "seed": cfg.seed, "cpus_per_trial": cfg.cpus_per_trial, "gpus_per_trial": cfg.gpus_per_trial,
    }
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data), {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            search_alg=BasicVariantGenerator(random_state=cfg.seed),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=cfg.max_epochs,
                grace_period=cfg.grace_period,
                reduction_factor=cfg.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_uri(storage_path), verbose=1),
    )
    results = tuner.fit()
    rows = trial_rows(results, cfg.max_epochs)
    best = results.get_best_result(metric="val_loss", mode="min", scope="all")
    return HeadHyperparams.from_mapping(best.config), rows


def trial_rows(results, max_epochs: int) -> list[dict]:
    """One row per trial: its config, epochs run, best val loss/accuracy, stopped early or not."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            rows.append({"trial": Path(result.path).name if result.path else "?", **result.config, "error": str(result.error)})
            continue
        best = history.loc[history["val_loss"].idxmin()]
        epochs = int(history["training_iteration"].max())
        rows.append({
            "trial": str(result.metrics.get("trial_id", Path(result.path).name)),
            **{k: result.config[k] for k in SEARCHED if k in result.config},
            "epochs": epochs,
            "best_val_loss": float(best["val_loss"]),
            "best_val_accuracy": float(best["val_accuracy"]),
            "stopped_early": epochs < max_epochs,
        })
    return sorted(rows, key=lambda row: row.get("best_val_loss", float("inf")))


def write_results(rows: list[dict], best: HeadHyperparams, base: Config, directory: Path) -> Path:
    """Save the trial table (CSV + JSON) and the best config as a YAML that ``train --config`` takes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    if rows:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with open(directory / "trials.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    best_config = base.model_copy(deep=True)
    best_config.train.lr, best_config.train.eps = best.lr, best.eps
    best_config.train.weight_decay, best_config.train.batch_size = best.weight_decay, best.batch_size
    best_config.model.hidden_size, best_config.model.dropout = best.hidden_size, best.dropout
    path = directory / "best_config.yaml"
    path.write_text("# The run's config with the best trial of the ASHA search in train.lr/eps/weight_decay/\n"
                    "# batch_size and model.hidden_size/dropout; usable as --config.\n" + best_config.to_yaml())
    return path


def format_table(rows: list[dict], limit: int = 20) -> str:
    """A plain-text table of the trials for the log."""
    header = f"{'trial':<12} {'lr':>9} {'wd':>8} {'bs':>4} {'hid':>4} {'drop':>5} {'ep':>3} {'val_loss':>9} {'val_acc':>8}"
    lines = [header]
    for row in rows[:limit]:
        if "best_val_loss" not in row:
            lines.append(f"{row['trial']:<12} failed: {row.get('error')}")
            continue
        lines.append(
            f"{row['trial']:<12} {row['lr']:>9.2e} {row['weight_decay']:>8.1e} {row['batch_size']:>4} "
            f"{row['hidden_size']:>4} {row['dropout']:>5.2f} {row['epochs']:>3} {row['best_val_loss']:>9.4f} "
            f"{row['best_val_accuracy']:>8.4f}" + ("  (stopped early)" if row["stopped_early"] else "")
        )
    return "\n".join(lines)

