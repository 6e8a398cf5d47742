"""Hyperparameter search: parallel ASHA trials with Ray Tune, each training the head on cached features.

Trials are cheap because the backbone never runs here: the feature arrays go into Ray's object
store once (``tune.with_parameters``) and every trial trains only the two-layer head.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from datetime import datetime
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from asl_platform.config import Config, TuneConfig
from asl_platform.data import DataError, augment_image, load_image, preprocess_images
from asl_platform.model import build_classifier, build_head, get_backbone_spec
from asl_platform.train import HeadHyperparams, fit_head, make_optimizer, storage_uri

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


def _trial_device(data: dict) -> torch.device:
    """The GPU a trial reserved (tune.gpus_per_trial > 0), else the CPU."""
    return torch.device("cuda" if data["gpus_per_trial"] > 0 and torch.cuda.is_available() else "cpu")


def _feature_trial(config: dict, data: dict) -> None:
    """One Tune trial: train a fresh head on cached features, report val loss/accuracy every epoch."""
    from ray import tune

    torch.set_num_threads(max(1, int(data["cpus_per_trial"])))
    torch.manual_seed(data["seed"])
    hp = HeadHyperparams.from_mapping(config)
    device = _trial_device(data)
    head = build_head(data["train"][0].shape[1], data["num_classes"], hp.hidden_size, hp.dropout).to(device)
    for metrics in fit_head(head, data["train"], data["val"], hp, data["max_epochs"], seed=data["seed"]):
        tune.report(metrics)


def _image_trial(config: dict, data: dict) -> None:
    """One Tune trial on images: the backbone runs on every image every epoch (augmentation and an
    unfrozen last stage become possible). Files that cannot be read are skipped."""
    from ray import tune

    torch.set_num_threads(max(1, int(data["cpus_per_trial"])))
    torch.manual_seed(data["seed"])
    hp = HeadHyperparams.from_mapping(config)
    device = _trial_device(data)
    model = build_classifier(
        data["backbone"], data["weights"], data["num_classes"], hp.hidden_size, hp.dropout, data["unfreeze_last_stage"]
    ).to(device)
    optimizer = make_optimizer(model, hp)
    for metrics in fit_on_images(model, optimizer, data["train_files"], data["val_files"], hp.batch_size,
                                 data["max_epochs"], data["augment"], data["seed"], device):
        tune.report(metrics)


def fit_on_images(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_files: tuple[list[str], list[int]],
    val_files: tuple[list[str], list[int]],
    batch_size: int,
    epochs: int,
    augment: bool,
    seed: int,
    device: torch.device = torch.device("cpu"),
) -> Iterator[dict]:
    """Train the whole classifier on image files, yielding metrics per epoch (full-image trials)."""
    prep = get_backbone_spec(model.backbone_name).preprocessing
    rng = random.Random(seed)

    def batches(files: tuple[list[str], list[int]], order: list[int], train: bool):
        for start in range(0, len(order), batch_size):
            images, labels = [], []
            for i in order[start:start + batch_size]:
                try:
                    image = load_image(files[0][i], draft_size=prep.image_size)
                except Exception:  # reported by the ingest stage; a trial just skips it
                    continue
                images.append(augment_image(image, rng) if train and augment else image)
                labels.append(files[1][i])
            if images:
                yield torch.from_numpy(preprocess_images(images, prep)).to(device), torch.tensor(labels, device=device)

    for epoch in range(1, epochs + 1):
        model.train()
        order = list(range(len(train_files[0])))
        rng.shuffle(order)
        running, seen = 0.0, 0
        for x, y in batches(train_files, order, train=True):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running, seen = running + loss.item() * len(y), seen + len(y)
        model.eval()
        total, correct, count = 0.0, 0, 0
        with torch.inference_mode():
            for x, y in batches(val_files, list(range(len(val_files[0]))), train=False):
                logits = model(x)
                total += nn.functional.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                count += len(y)
        yield {"epoch": epoch, "train_loss": running / max(seen, 1), "val_loss": total / max(count, 1),
               "val_accuracy": correct / max(count, 1)}


def _trainable(cfg: TuneConfig, data: dict):
    from ray import tune

    trial = _image_trial if cfg.mode == "images" else _feature_trial
    return tune.with_resources(
        tune.with_parameters(trial, data=data), {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    )


def run_search(
    data: dict,
    cfg: TuneConfig,
    storage_path: str,
    name: str = "tune",
    resume: bool = False,
) -> tuple[HeadHyperparams, list[dict]]:
    """Run (or resume) the ASHA search; return the best hyperparameters and one row per trial.

    ``data`` holds what trials need: ``train``/``val`` feature arrays (mode features) or
    ``train_files``/``val_files`` (mode images), plus ``num_classes``. A fresh search never
    overwrites an earlier one: its folder is renamed aside first.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    data = {
        **data, "max_epochs": cfg.max_epochs, "seed": cfg.seed, "cpus_per_trial": cfg.cpus_per_trial,
        "gpus_per_trial": cfg.gpus_per_trial, "augment": cfg.augment,
    }
    experiment = f"{storage_uri(storage_path)}/{name}"
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise DataError(f"no interrupted search to resume at {experiment}; run without --resume")
        logger.info("resuming the search in %s (finished trials are kept)", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=_trainable(cfg, data), resume_unfinished=True, resume_errored=True)
    else:
        _move_aside(experiment)
        tuner = tune.Tuner(
            _trainable(cfg, data),
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
    return HeadHyperparams.from_mapping(best.config), rows, results


def _move_aside(experiment: str) -> None:
    """Keep an earlier search's results: rename its folder with a timestamp (local storage)."""
    path = Path(experiment)
    if "://" not in experiment and path.exists():
        target = path.with_name(f"{path.name}-{datetime.now():%Y%m%d-%H%M%S-%f}")
        path.rename(target)
        logger.info("an earlier search was kept as %s", target)


def plot_curves(results, path: Path) -> Path:
    """Validation loss and accuracy per epoch, one line per trial (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            continue
        label = str(result.metrics.get("trial_id", "?"))
        loss_axis.plot(history["training_iteration"], history["val_loss"], marker=".", label=label)
        accuracy_axis.plot(history["training_iteration"], history["val_accuracy"], marker=".", label=label)
    loss_axis.set(title="validation loss", xlabel="epoch", yscale="log")
    accuracy_axis.set(title="validation accuracy", xlabel="epoch", ylim=(0, 1))
    accuracy_axis.legend(fontsize=7, ncol=2, loc="lower right")
    figure.suptitle("ASHA trials (lines that end early were stopped by the scheduler)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


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
    """Save the trial table (CSV + JSON) and the best config as a YAML usable as ``--config``."""
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

