"""The function every Ray Train worker runs, for every kind of training.

It receives the whole config (``cfg.model_dump()``, validated back into ``Config`` here) plus what
the driver put beside it: the kind, the class count, and for cached inputs the arrays' object refs.
Images come as this worker's shard of the Ray Data stream. Rank 0 checkpoints every epoch and logs
the epoch line, which Ray forwards to the driver.
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile

import numpy as np
import torch

from asl_platform.config import Config
from asl_platform.model import get_backbone_spec
from asl_platform.training import recipe
from asl_platform.training.loop import EarlyStopping, TrainingState, fit, read_checkpoint, restore, save_checkpoint
from asl_platform.training.sources import ArrayBatches, ShardBatches, evaluation_batch_size, member_sources

logger = logging.getLogger("asl_platform.training")


def log_epoch(metrics: dict, epochs: int, kind: recipe.Kind) -> None:
    logger.info("%s, epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.2f%%, %.1f images/s%s",
                recipe.TRAINS[kind], metrics["epoch"], epochs, metrics["train_loss"], metrics["val_loss"],
                100 * metrics["val_accuracy"], metrics["images_per_second"],
                " (early stop)" if metrics.get("early_stop") else "")


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report (all metrics, the checkpoint path) at INFO from a logger named by its
    file, which ``LoggingConfig(log_level=...)`` does not reach; the epoch line says what matters."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its lines stay, nothing breaks
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _sources(loop_config: dict, cfg: Config, rank: int, world: int, device: torch.device):
    """This worker's training batches and the (whole) validation batches for ``kind``."""
    import ray
    import ray.train

    kind = loop_config["kind"]
    batch_size = cfg.train.batch_size
    if kind == "images":
        train = ShardBatches(ray.train.get_dataset_shard("train"), batch_size, device, shuffle=True)
        return train, ShardBatches(ray.train.get_dataset_shard("val"), batch_size, device)
    x_train, y_train = ray.get(loop_config["train"])
    weights = loop_config.get("train_weights")
    weights = None if weights is None else ray.get(weights)
    if loop_config.get("folds") is not None:  # held-out people: the model of everyone and one per fold (one worker)
        return member_sources(x_train, y_train, ray.get(loop_config["folds"]), batch_size, device, seed=cfg.train.seed,
                              noise=recipe.feature_noise(cfg, kind), weights=weights)
    x_val, y_val = ray.get(loop_config["val"])
    usable = len(y_train) // world * world  # equal shards: DDP needs the same number of steps on every worker
    train = ArrayBatches(x_train[rank:usable:world], y_train[rank:usable:world], batch_size, device, shuffle=True,
                         seed=cfg.train.seed, noise=recipe.feature_noise(cfg, kind),
                         weights=None if weights is None else weights[rank:usable:world])
    return train, ArrayBatches(x_val, y_val, evaluation_batch_size(x_val), device)


def _all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker training totals across the group (each worker trains on its own shard)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    _quiet_ray_train_reports()
    cfg = Config.model_validate(loop_config["config"])
    kind = loop_config["kind"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    # Ray limits a 1-CPU worker to 1 thread; decoding needs only a sliver of a core per batch, so the
    # worker's math uses its share of the node (bench/train.py: 0.63x -> 0.95x of a plain loop).
    torch.set_num_threads(cfg.train.torch_threads or max(1, (os.cpu_count() or 1) // world))
    model = build_trained(cfg, loop_config)
    optimizer = recipe.make_optimizer(model, cfg)
    state, saved = TrainingState(EarlyStopping(cfg.train.early_stopping_patience)), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a worker died: every worker restarts from the last checkpoint, nothing is redone
        with checkpoint.as_directory() as directory:
            saved = read_checkpoint(directory)
        state = restore(model, saved)
    if state.early_stopping.stopped:  # the failure came after early stopping had already ended the run
        return
    # No module here updates BatchNorm statistics (frozen backbones stay in eval mode): no buffer broadcasts.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    if saved is not None:  # after the move to the device, so the optimizer state lands there too
        optimizer.load_state_dict(saved["optimizer"])
    train, val = _sources(loop_config, cfg, rank, world, device)
    amp = recipe.mixed_precision(cfg, kind, device)
    epochs = fit(model, optimizer, train, val, epochs=cfg.train.epochs, state=state,
                 label_smoothing=recipe.label_smoothing(cfg, kind), amp=amp,
                 reduce=lambda values: _all_reduce_sums(values, device))
    for metrics in epochs:
        metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(tmp, model, optimizer, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                log_epoch(metrics, cfg.train.epochs, kind)
            ray.train.report(metrics, checkpoint=checkpoint)


def build_trained(cfg: Config, loop_config: dict) -> torch.nn.Module:
    """What the run trains, freshly initialised (``train.seed``): the model, or where the run chooses on held-out
    people (``folds`` given) the model of everyone followed by one per fold, as ``recipe.build_members``."""
    kind, num_classes, feature_dim = loop_config["kind"], loop_config["num_classes"], loop_config.get("feature_dim")
    folds = loop_config.get("folds")
    if folds is not None:
        return recipe.build_members(cfg, kind, num_classes, feature_dim, 1 + loop_config["fold_count"], cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    return recipe.build_model(cfg, kind, num_classes, feature_dim)


def feature_dim_of(inputs: np.ndarray, cfg: Config) -> int:
    """The head's input size: the cached features' width, or the backbone's pooled size for activations."""
    return inputs.shape[1] if inputs.ndim == 2 else get_backbone_spec(cfg.model.backbone).feature_dim
