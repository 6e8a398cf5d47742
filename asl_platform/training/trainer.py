"""The driver side of Ray Train: one ``TorchTrainer`` for every kind of training, configured from
the ``train`` section (workers, CPUs, GPUs, checkpoints kept, failures survived), and the best
epoch's model rebuilt from its checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from asl_platform.config import Config
from asl_platform.data.listing import ImageIndex
from asl_platform.data.people import Folds
from asl_platform.data.reading import image_dataset
from asl_platform.data.storage import storage_uri
from asl_platform.errors import UserError
from asl_platform.model import build_backbone, get_backbone_spec, load_trained_state
from asl_platform.training import recipe
from asl_platform.training.loop import read_checkpoint
from asl_platform.training.worker import build_trained, feature_dim_of, train_loop_per_worker

logger = logging.getLogger(__name__)

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class TrainingResult:
    model: nn.Module  # the best epoch's (by validation loss), in eval mode
    best_metrics: dict
    history: list[dict]  # every epoch run, once each, even across worker failures
    checkpoint_path: str
    held_out: list[nn.Module] = field(default_factory=list)  # held-out people: each fold's model at that epoch
    folds: Folds | None = None


def drop_unreadable(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep readable rows, and only what training needs (tensors; strings cannot go to torch).

    The driver's check already listed and removed the unreadable files (skipped_files.csv); a row
    failing here failed only now (e.g. a file changed or a read error since), so it is logged."""
    keep = batch["error"] == ""
    for path, error in zip(batch["path"][~keep], batch["error"][~keep]):
        logger.warning("unreadable during training, skipped: %s: %s", path, error)
    return {"image": batch["image"][keep], "label": batch["label"][keep].astype(np.int64)}


def _check_resources(cfg: Config, kind: recipe.Kind) -> None:
    import ray

    if kind != "images":
        return
    reserved = cfg.train.num_workers * cfg.train.cpus_per_worker
    available = ray.cluster_resources().get("CPU", 0)
    if reserved > available - 1 + 1e-9:
        raise UserError(
            f"train.num_workers x train.cpus_per_worker = {reserved:g} CPUs, but the cluster has {available:g}: "
            "leave at least one CPU for Ray Data to decode images (lower cpus_per_worker, e.g. 0.5, or num_workers)"
        )


def image_datasets(cfg: Config, train: ImageIndex, val: ImageIndex) -> dict:
    """Ray Data streams of the image splits: the training one shuffled and (``train.augment``) augmented."""
    prep = get_backbone_spec(cfg.model.backbone).preprocessing
    common = {"batch_size": cfg.data.batch_size, "max_bytes": cfg.data.max_image_bytes}
    return {
        "train": image_dataset(train, prep, augment=cfg.train.augment, shuffle_seed=cfg.train.seed, **common)
        .map_batches(drop_unreadable, batch_format="numpy"),
        "val": image_dataset(val, prep, **common).map_batches(drop_unreadable, batch_format="numpy"),
    }


def build_trainer(cfg: Config, kind: recipe.Kind, num_classes: int, name: str, *,
                  arrays: dict[str, Arrays] | None = None, datasets: dict | None = None,
                  train_weights: np.ndarray | None = None, folds: Folds | None = None):
    """The ``TorchTrainer``: the whole config travels to every worker (``train_loop_config``);
    cached arrays (and their rows' sampling weights, if any, and the folds that hold people out) go once
    through the object store, images as Ray Data shards (val unsplit)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train import DataConfig as RayDataConfig
    from ray.train.torch import TorchTrainer

    loop_config = {"config": cfg.model_dump(mode="json"), "kind": kind, "num_classes": num_classes}
    if arrays is not None:
        loop_config.update(train=ray.put(arrays["train"]), val=None if folds else ray.put(arrays["val"]),
                           feature_dim=feature_dim_of(arrays["train"][0], cfg),
                           train_weights=None if train_weights is None else ray.put(train_weights),
                           folds=ray.put(folds) if folds else None, fold_count=len(folds) if folds else 0)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        datasets=datasets,
        dataset_config=RayDataConfig(datasets_to_split=["train"]) if datasets else None,
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(cfg.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep,
                                               checkpoint_score_attribute="val_score", checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            # Ray Train's own INFO lines (every report, every checkpoint path) would bury the epoch
            # lines that rank 0 logs (Ray forwards them to the driver's terminal).
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def checked_init_from(cfg: Config, classes: list[str]) -> Config:
    """The warm-start model must match what is trained; say so before any worker starts. The
    workers (maybe on other nodes) get its resolved location: an absolute folder or a version URI."""
    from asl_platform.model import ModelCard, model_location, resolve_model_dir

    if cfg.train.init_from is None:
        return cfg
    location = model_location(cfg.train.init_from)
    card = ModelCard.load(resolve_model_dir(location))
    wanted = {"backbone": cfg.model.backbone, "classes": classes, "hidden_size": cfg.model.hidden_size}
    found = {"backbone": card.backbone, "classes": card.classes, "hidden_size": card.head.hidden_size}
    mismatched = [key for key in wanted if wanted[key] != found[key]]
    if mismatched:
        raise UserError(f"train.init_from {location} does not match this training run ({', '.join(mismatched)} differ)")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"init_from": location})})


def run_training(cfg: Config, kind: recipe.Kind, num_classes: int, name: str, *,
                 arrays: dict[str, Arrays] | None = None, index: dict[str, ImageIndex] | None = None,
                 train_weights: np.ndarray | None = None, folds: Folds | None = None) -> TrainingResult:
    """Train ``kind`` with Ray Train and return the best epoch's model (lowest ``val_score``: the validation
    loss, or the error on held-out people).

    ``arrays``: {"train": (x, y), "val": (x, y)} cached features, activations or landmarks, with
    ``train_weights`` (one per training row) when rows are drawn by weight; ``index``:
    {"train": ImageIndex, "val": ImageIndex} of readable image files. ``folds`` (cached arrays only, no
    "val"): choose on held-out people (``data.people``): the model of every row is trained in lockstep with
    one model per fold, the epoch is the one at which the folds' models did best on their held-out groups,
    and those models come back too (``held_out``), for what is chosen after training. The commands check the
    config's ``train`` keys first (``recipe.check_train_keys``), before any data work."""
    _check_resources(cfg, kind)
    if folds is not None and cfg.train.num_workers != 1:
        raise UserError(f"train.num_workers={cfg.train.num_workers}: choosing on held-out people trains one small model "
                        "per held-out group in lockstep on one worker; set train.num_workers=1 (or data.validation=split "
                        "for data-parallel training)")
    if kind == "images":
        cfg = checked_init_from(cfg, index["train"].classes)
    if kind in ("activations", "images"):
        build_backbone(cfg.model.backbone, cfg.model.weights)  # missing weights: fail here, clearly, once
    datasets = image_datasets(cfg, index["train"], index["val"]) if kind == "images" else None
    trainer = build_trainer(cfg, kind, num_classes, name, arrays=arrays, datasets=datasets, train_weights=train_weights,
                            folds=folds)
    result = trainer.fit()
    best = result.get_best_checkpoint(metric="val_score", mode="min")
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    feature_dim = feature_dim_of(arrays["train"][0], cfg) if arrays is not None else None
    model = build_trained(cfg, {"kind": kind, "num_classes": num_classes, "feature_dim": feature_dim, "folds": folds,
                                "fold_count": len(folds) if folds else 0})  # the frozen weights, as the workers started from
    with best.as_directory() as directory:
        load_trained_state(model, read_checkpoint(directory)["model"])
    model.eval()
    held_out = []
    if folds is not None:
        model, *held_out = model
    with result.checkpoint.as_directory() as directory:  # the last epoch's checkpoint holds the whole history
        history = read_checkpoint(directory)["history"]
    logger.info("%s trained: best epoch %s of %d run, val loss %.4f, val accuracy %.2f%%%s", recipe.TRAINS[kind],
                best_metrics["epoch"], len(history), best_metrics["val_loss"], 100 * best_metrics["val_accuracy"],
                f" (mean over {len(folds)} held-out groups of people, each fold's model trained without its group)"
                if folds else "")
    return TrainingResult(model, dict(best_metrics), history, best.path, held_out, folds)


def write_tensorboard(history: list[dict], directory: Path) -> Path:
    """Per-epoch metrics as TensorBoard scalars (tensorboardX ships with Ray Tune)."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(directory))
    for row in history:
        for key in ("train_loss", "val_loss", "val_accuracy", "images_per_second", "data_wait_seconds"):
            if key in row:
                writer.add_scalar(key, float(row[key]), int(row["epoch"]))
    writer.close()
    return directory
