"""Training: the head-on-features loop (shared with Tune trials) and the Ray Train retrain.

The backbone is frozen, so training the classifier is training its head on the cached backbone
features. That loop is plain PyTorch (``fit_head``); Ray Tune runs it once per trial and Ray Train's
TorchTrainer runs it data-parallel for the final retrain, with a checkpoint every epoch.

With ``model.unfreeze_last_stage`` the pipeline caches the activations *before* the backbone's last
stage instead, and the retrain trains that last stage (``LastStageClassifier``: tail + head) on them
by the same loop: the frozen trunk never runs again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from ray.train import UserCallback
from torch import nn

from asl_platform.data import DataError
from asl_platform.model import build_backbone, build_classifier, build_head, split_backbone

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadHyperparams:
    """The searched values: AdamW's lr/eps/weight_decay, batch size, and the head's shape."""

    lr: float = 1e-3
    eps: float = 1e-8
    weight_decay: float = 1e-2
    batch_size: int = 64
    hidden_size: int = 256
    dropout: float = 0.2

    @classmethod
    def from_mapping(cls, values: dict) -> HeadHyperparams:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in names})


def make_optimizer(model: nn.Module, hp: HeadHyperparams) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, as in the original design."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=hp.lr, eps=hp.eps, weight_decay=hp.weight_decay
    )


@dataclass(frozen=True)
class LastStageOptions:
    """Retraining the backbone's last stage on cached trunk activations (``model.unfreeze_last_stage``)."""

    backbone: str
    weights: str
    lr_factor: float = 0.1  # the last stage's lr = the head's lr x this
    label_smoothing: float = 0.1
    feature_noise: float = 0.1  # multiplicative per-channel noise on the activations (light augmentation)
    patience: int | None = 3  # early stopping: epochs without a better val loss
    torch_threads: int | None = None


class LastStageClassifier(nn.Module):
    """The backbone's last stage (its ``split_backbone`` tail) followed by the head: what is trained
    on trunk activations. The tail stays in eval mode, so its BatchNorm keeps the pretrained statistics
    (as ``ASLClassifier`` keeps them when its last stage is unfrozen)."""

    def __init__(self, tail: nn.Module, head: nn.Sequential):
        super().__init__()
        self.tail, self.head = tail, head

    def train(self, mode: bool = True) -> LastStageClassifier:
        super().train(mode)
        self.tail.eval()
        return self

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(activations))


def build_last_stage_classifier(
    backbone: str, weights: str, num_classes: int, hidden_size: int, dropout: float
) -> LastStageClassifier:
    """A fresh head on the (pretrained) last stage of ``backbone``; the trunk is built and dropped."""
    from asl_platform.model import get_backbone_spec

    tail = split_backbone(backbone, build_backbone(backbone, weights))[1]
    for parameter in tail.parameters():
        parameter.requires_grad = True
    head = build_head(get_backbone_spec(backbone).feature_dim, num_classes, hidden_size, dropout)
    return LastStageClassifier(tail, head)


def make_last_stage_optimizer(model: LastStageClassifier, hp: HeadHyperparams, lr_factor: float) -> torch.optim.AdamW:
    """AdamW with two parameter groups: the head at ``hp.lr``, the pretrained last stage at ``hp.lr * lr_factor``."""
    return torch.optim.AdamW(
        [{"params": list(model.head.parameters()), "lr": hp.lr},
         {"params": list(model.tail.parameters()), "lr": hp.lr * lr_factor}],
        lr=hp.lr, eps=hp.eps, weight_decay=hp.weight_decay,
    )


def evaluate_head(head: nn.Module, features: np.ndarray, labels: np.ndarray, batch_size: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``head`` on feature vectors (or of a ``LastStageClassifier``
    on trunk activations)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    batch_size = batch_size or (1024 if features.ndim == 2 else 256)
    head.eval()
    device = next(head.parameters()).device
    total_loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            x = torch.from_numpy(features[start:start + batch_size]).to(device).float()  # activations are float16
            y = torch.from_numpy(labels[start:start + batch_size]).to(device)
            logits = head(x)
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


def fit_head(
    head: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    hp: HeadHyperparams,
    epochs: int,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    label_smoothing: float = 0.0,
    feature_noise: float = 0.0,
) -> Iterator[dict]:
    """Train ``head`` with AdamW; yield metrics after every epoch (callers report/checkpoint).

    ``feature_noise`` > 0 multiplies each input channel by ``1 + feature_noise * N(0, 1)`` (drawn per
    example and channel): a light augmentation for training on cached activations."""
    generator = torch.Generator().manual_seed(seed)
    device = next(head.parameters()).device
    x_train, y_train = torch.from_numpy(train[0]).to(device), torch.from_numpy(train[1]).to(device)
    optimizer = optimizer or make_optimizer(head, hp)
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(y_train), generator=generator)
        running, seen = 0.0, 0
        for start in range(0, len(order), hp.batch_size):
            batch = order[start:start + hp.batch_size]
            x = x_train[batch].float()  # trunk activations stay float16 until a batch is taken
            if feature_noise > 0:
                noise = torch.randn(x.shape[:2], generator=generator).to(device)
                x = x * (1 + feature_noise * noise.view(*x.shape[:2], *([1] * (x.dim() - 2))))
            loss = nn.functional.cross_entropy(head(x), y_train[batch], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(batch)
            seen += len(batch)
        val_loss, val_accuracy = evaluate_head(head, *val)
        yield {"epoch": epoch, "train_loss": running / max(seen, 1), "val_loss": val_loss, "val_accuracy": val_accuracy}


# --------------------------------------------------------------------------- Ray Train retrain


def _retrain_loop(config: dict) -> None:
    """Runs on every Ray Train worker: each takes its rank's slice of the training features.

    With ``config["last_stage"]`` the arrays are trunk activations and the trained module is the
    backbone's last stage + head (``LastStageClassifier``); the checkpoint then holds both (never the
    frozen trunk), and training stops early after ``patience`` epochs without a better val loss."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])
    hp = HeadHyperparams.from_mapping(config["hp"])
    last_stage = LastStageOptions(**config["last_stage"]) if config.get("last_stage") else None
    x_train, y_train = ray.get(config["train"])
    val = ray.get(config["val"])
    usable = len(y_train) // world * world  # equal shards: DDP needs the same number of steps
    x_train, y_train = x_train[rank:usable:world], y_train[rank:usable:world]
    if last_stage is None:
        head = build_head(x_train.shape[1], config["num_classes"], hp.hidden_size, hp.dropout)
        optimizer = make_optimizer(head, hp)
        fit_options = {}
    else:
        # A 1-CPU Ray worker gets 1 thread; the last stage is real convolution work: use the node's share.
        torch.set_num_threads(last_stage.torch_threads or max(1, (os.cpu_count() or 1) // world))
        head = build_last_stage_classifier(
            last_stage.backbone, last_stage.weights, config["num_classes"], hp.hidden_size, hp.dropout
        )
        optimizer = make_last_stage_optimizer(head, hp, last_stage.lr_factor)
        fit_options = {"label_smoothing": last_stage.label_smoothing, "feature_noise": last_stage.feature_noise}
    start_epoch, saved = 1, None
    early = {"best_val_loss": float("inf"), "stale_epochs": 0, "stopped": False}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resumed after a failure: continue from the last finished epoch, same optimizer state
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / "head.pt", map_location="cpu", weights_only=True)
            if last_stage is None:
                head.load_state_dict(saved["head"])
            else:
                head.head.load_state_dict(saved["head"])
                head.tail.load_state_dict(saved["tail"])
                early = saved["early_stopping"]
            start_epoch = saved["epoch"] + 1
    if early["stopped"]:  # the failure came after early stopping had already ended the run
        return
    # The tail's frozen BatchNorm buffers never change: no need to broadcast them every step.
    model = ray.train.torch.prepare_model(
        head, parallel_strategy_kwargs={"broadcast_buffers": False} if last_stage else None
    )
    if saved is not None:  # after the move to the device, so the optimizer state lands there too
        optimizer.load_state_dict(saved["optimizer"])
    remaining = config["epochs"] - start_epoch + 1
    epochs = fit_head(model, (x_train, y_train), val, hp, remaining, seed=config["seed"] + start_epoch,
                      optimizer=optimizer, **fit_options)
    started = time.perf_counter()
    for metrics in epochs:
        metrics["epoch"] = epoch = metrics["epoch"] + start_epoch - 1
        if last_stage is not None:  # an epoch takes seconds here: say how many (logged by the driver)
            seconds, started = time.perf_counter() - started, time.perf_counter()
            metrics.update(epoch_seconds=seconds, images_per_second=len(y_train) * world / max(seconds, 1e-9))
        if last_stage is not None and last_stage.patience:
            improved = metrics["val_loss"] < early["best_val_loss"]
            stale = 0 if improved else early["stale_epochs"] + 1
            metrics["early_stop"] = stale >= last_stage.patience
            early = {"best_val_loss": min(metrics["val_loss"], early["best_val_loss"]), "stale_epochs": stale,
                     "stopped": metrics["early_stop"]}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                unwrapped = _unwrap(model)
                if last_stage is None:
                    state = {"head": unwrapped.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
                else:  # only what is trained: the last stage and the head, not the frozen trunk
                    state = {"head": unwrapped.head.state_dict(), "tail": unwrapped.tail.state_dict(),
                             "optimizer": optimizer.state_dict(), "epoch": epoch, "early_stopping": early}
                torch.save(state, Path(tmp) / "head.pt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if early["stopped"]:  # every worker saw the same val metrics, so all stop together
            break


def storage_uri(path: str) -> str:
    """Ray storage wants an absolute local path or a URI (s3://... for shared storage on a cluster)."""
    return path if "://" in path else str(Path(path).resolve())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def retrain_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    hp: HeadHyperparams,
    epochs: int,
    storage_path: str,
    name: str,
    num_workers: int = 1,
    use_gpu: bool = False,
    seed: int = 0,
    last_stage: LastStageOptions | None = None,
) -> tuple[nn.Module, dict]:
    """Retrain the head with Ray Train; return the head of the best epoch (lowest val loss).

    With ``last_stage`` the arrays are trunk activations (``extract_features(output="trunk")``) and
    what is trained and returned is a ``LastStageClassifier`` (the backbone's last stage + head)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    callbacks, queue = [], None
    if last_stage is not None:
        from ray.util.queue import Queue

        build_backbone(last_stage.backbone, last_stage.weights)  # missing weights: fail here, clearly, once
        queue = Queue()
        callbacks.append(EpochsToQueue(queue))
    trainer = TorchTrainer(
        _retrain_loop,
        train_loop_config={  # the arrays travel once, through the object store
            "train": ray.put(train), "val": ray.put(val), "num_classes": num_classes, "hp": asdict(hp),
            "epochs": epochs, "seed": seed, "last_stage": asdict(last_stage) if last_stage else None,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            failure_config=FailureConfig(max_failures=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit() if queue is None else fit_logging_epochs(trainer, queue, epochs)
    best_checkpoint = result.get_best_checkpoint(metric="val_loss", mode="min")
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best_checkpoint.path)
    with best_checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / "head.pt", map_location="cpu", weights_only=True)
    if last_stage is None:
        head = build_head(train[0].shape[1], num_classes, hp.hidden_size, hp.dropout)
        head.load_state_dict(saved["head"])
    else:
        head = build_last_stage_classifier(last_stage.backbone, last_stage.weights, num_classes, hp.hidden_size, hp.dropout)
        head.head.load_state_dict(saved["head"])
        head.tail.load_state_dict(saved["tail"])
    head.eval()
    last = (getattr(result, "metrics", None) or {}).get("epoch")  # the last epoch run (early stopping)
    logger.info("retrain done: best epoch %s of %s run, val_loss %.4f, val_accuracy %.4f",
                best_metrics["epoch"], last, best_metrics["val_loss"], best_metrics["val_accuracy"])
    return head, {**best_metrics, "epochs_run": last}


# --------------------------------------------------------------------------- Ray Train on images


def drop_unreadable(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep readable rows, and only what training needs (tensors; strings cannot go to torch).

    The driver's check already listed and removed the unreadable files (skipped_files.csv); a row
    failing here failed only now (e.g. a file changed or a read error since), so it is logged.
    """
    keep = batch["error"] == ""
    for path, error in zip(batch["path"][~keep], batch["error"][~keep]):
        logger.warning("unreadable during training, skipped: %s: %s", path, error)
    return {"image": batch["image"][keep], "label": batch["label"][keep].astype(np.int64)}


def _all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker training totals across the group (each worker trains on its own shard)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _image_train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: train the classifier on its shard of the image stream,
    validate on the whole val stream, checkpoint every epoch (rank 0), stop early together."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    # Ray limits a 1-CPU worker to 1 thread; the decode tasks need only a sliver of a core per image
    # batch, so let the worker's math use its share of the node (0.63x -> see bench/train.py).
    torch.set_num_threads(config["torch_threads"] or max(1, (os.cpu_count() or 1) // config["num_workers"]))
    torch.manual_seed(config["seed"])
    model = starting_classifier(config)
    optimizer = make_optimizer(model, HeadHyperparams.from_mapping(config["hp"]))
    state = {"epoch": 0, "best_val_loss": float("inf"), "stale_epochs": 0, "history": [], "stopped": False}
    saved = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a worker died: every worker restarts from the last checkpoint, nothing redone twice
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=True)
        load_trained_state(model, saved["model"])
        state = saved["state"]
    # The frozen backbone's BatchNorm buffers never change: no need to broadcast them every step.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    if saved is not None:  # after the move to the device, so the optimizer state lands there too
        optimizer.load_state_dict(saved["optimizer"])
    if state.get("stopped"):  # the failure came after early stopping had already ended the run
        return
    use_amp = device.type == "cuda"
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    batch_size = config["hp"]["batch_size"]

    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        model.train()
        started, waiting, images, loss_sum = time.perf_counter(), 0.0, 0, 0.0
        fetch_started = time.perf_counter()
        for batch in train_shard.iter_torch_batches(
            batch_size=batch_size, device=device, local_shuffle_buffer_size=4 * batch_size
        ):
            waiting += time.perf_counter() - fetch_started
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(batch["label"])
            loss_sum += loss.item() * len(batch["label"])
            fetch_started = time.perf_counter()
        train_seconds = time.perf_counter() - started

        # Validation: every worker scores the whole (unsplit) val set with the unwrapped model, so all
        # workers get identical metrics (same early-stopping decision) and no collective is involved.
        model.eval()
        val_loss, correct, count = 0.0, 0, 0
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            for batch in val_shard.iter_torch_batches(batch_size=batch_size, device=device):
                logits = _unwrap(model)(batch["image"]).float()
                val_loss += nn.functional.cross_entropy(logits, batch["label"], reduction="sum").item()
                correct += (logits.argmax(1) == batch["label"]).sum().item()
                count += len(batch["label"])
        if count == 0:
            raise RuntimeError("no readable validation images")
        images_all, loss_all = _all_reduce_sums([images, loss_sum], device)
        val_loss, val_accuracy = val_loss / count, correct / count
        improved = val_loss < state["best_val_loss"]
        stale = 0 if improved else state["stale_epochs"] + 1
        metrics = {
            "epoch": epoch, "train_loss": loss_all / max(images_all, 1), "val_loss": val_loss,
            "val_accuracy": val_accuracy, "train_images": int(images_all), "train_seconds": train_seconds,
            "data_wait_seconds": waiting, "images_per_second": images_all / max(train_seconds, 1e-9),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if use_amp else 0.0,
            "early_stop": stale >= config["patience"],
        }
        state = {  # the history travels in the checkpoint, so it survives a worker failure
            "epoch": epoch, "best_val_loss": min(val_loss, state["best_val_loss"]), "stale_epochs": stale,
            "history": state["history"] + [metrics], "stopped": metrics["early_stop"],
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({"model": trained_state(_unwrap(model)), "optimizer": optimizer.state_dict(), "state": state},
                           Path(tmp) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if metrics["early_stop"]:  # every worker saw the same reduced metrics, so all stop together
            break


def starting_classifier(config: dict) -> nn.Module:
    """The classifier as training starts: backbone weights from ``config["weights"]``, then the warm
    start ``init_from`` if any (e.g. the pipeline's head trained on cached features). A checkpoint holds
    only what training changes (``trained_state``) and is loaded on top of this."""
    model = build_classifier(
        config["backbone"], config["weights"], config["num_classes"], config["hidden_size"], config["dropout"],
        config["unfreeze_last_stage"],
    )
    if config["init_from"]:
        from asl_platform.model import load_model_dir

        model.load_state_dict(load_model_dir(config["init_from"])[0].state_dict())
    return model


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and the buffers (BatchNorm statistics, small).
    The frozen backbone is left out (``starting_classifier`` rebuilds it), so a ResNet-50 checkpoint
    is about 4.5 MB instead of about 100 MB."""
    keep = {name for name, p in model.named_parameters() if p.requires_grad} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in model.state_dict().items() if name in keep}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a ``trained_state`` onto a ``starting_classifier``; anything else missing is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(set(missing) - frozen)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


def fit_logging_epochs(trainer, queue, epochs: int):
    """``trainer.fit()`` while a driver thread logs the epochs ``EpochsToQueue`` forwards."""
    stop = threading.Event()
    reporter = threading.Thread(target=_log_epochs, args=(queue, epochs, stop), daemon=True)
    reporter.start()
    try:
        return trainer.fit()
    finally:
        stop.set()
        reporter.join(timeout=5)
        queue.shutdown()


class EpochsToQueue(UserCallback):
    """Ray Train callback (runs in the controller process): forward each epoch's metrics to the
    driver, which logs them, so a long training run shows where it is."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics:
            self.queue.put(metrics[0])


def _log_epochs(queue, epochs: int, stop: threading.Event) -> None:
    from ray.util.queue import Empty

    while not stop.is_set() or not queue.empty():
        try:
            m = queue.get(timeout=0.5)
        except Empty:
            continue
        logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.2f%%, %.1f images/s",
                    m["epoch"], epochs, m["train_loss"], m["val_loss"], 100 * m["val_accuracy"], m["images_per_second"])


def _checked_init_from(path: str | None, model_cfg, classes: list[str]) -> str | None:
    """The warm-start model must match what is trained; say so before any worker starts."""
    if path is None:
        return None
    from asl_platform.model import model_location, resolve_model_dir

    location = model_location(path)  # what the workers load: they may run on other nodes
    directory = resolve_model_dir(location)
    meta = json.loads((directory / "model.json").read_text())
    wanted = {"backbone": model_cfg.backbone, "classes": classes, "hidden_size": model_cfg.hidden_size}
    found = {"backbone": meta["backbone"], "classes": meta["classes"], "hidden_size": meta["head"]["hidden_size"]}
    if wanted != found:
        mismatched = [key for key in wanted if wanted[key] != found[key]]
        raise DataError(f"train.init_from {location} does not match this training run ({', '.join(mismatched)} differ)")
    return location


@dataclass
class ImageTrainingResult:
    model: nn.Module
    best_metrics: dict
    history: list[dict]
    checkpoint_path: str


def train_on_images(
    train_index, val_index, classes: list[str], model_cfg, train_cfg, data_cfg, storage_path: str, name: str
) -> ImageTrainingResult:
    """Data-parallel training with Ray Train's TorchTrainer, fed by Ray Data shards of the image
    folders (augmented train split). Returns the model of the best epoch by validation loss.

    The indexes should hold readable files only (``pipeline.prepare_data`` lists and removes the
    others); workers can drop a bad row but cannot tell the driver which file it was."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from asl_platform.data import image_dataset
    from asl_platform.model import get_backbone_spec

    build_backbone(model_cfg.backbone, model_cfg.weights)  # missing weights: fail here, clearly, once
    reserved = train_cfg.num_workers * train_cfg.cpus_per_worker
    available = ray.cluster_resources().get("CPU", 0)
    if reserved > available - 1 + 1e-9:
        raise DataError(
            f"train.num_workers x train.cpus_per_worker = {reserved:g} CPUs, but the cluster has {available:g}: "
            "leave at least one CPU for Ray Data to decode images (lower cpus_per_worker, e.g. 0.5, or num_workers)"
        )
    prep = get_backbone_spec(model_cfg.backbone).preprocessing
    datasets = {
        "train": image_dataset(train_index, prep, data_cfg.batch_size, data_cfg.max_image_bytes,
                               augment=train_cfg.augment, shuffle_seed=train_cfg.seed)
        .map_batches(drop_unreadable, batch_format="numpy"),
        "val": image_dataset(val_index, prep, data_cfg.batch_size, data_cfg.max_image_bytes)
        .map_batches(drop_unreadable, batch_format="numpy"),
    }
    queue = Queue()
    hp = HeadHyperparams(lr=train_cfg.lr, eps=train_cfg.eps, weight_decay=train_cfg.weight_decay,
                         batch_size=train_cfg.batch_size, hidden_size=model_cfg.hidden_size, dropout=model_cfg.dropout)
    loop_config = {
        "backbone": model_cfg.backbone, "weights": model_cfg.weights, "num_classes": len(classes),
        "hidden_size": model_cfg.hidden_size, "dropout": model_cfg.dropout,
        "unfreeze_last_stage": model_cfg.unfreeze_last_stage, "hp": asdict(hp), "epochs": train_cfg.epochs,
        "patience": train_cfg.early_stopping_patience, "seed": train_cfg.seed,
        "torch_threads": train_cfg.torch_threads, "num_workers": train_cfg.num_workers,
        "init_from": _checked_init_from(train_cfg.init_from, model_cfg, classes),
    }
    trainer = TorchTrainer(
        _image_train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
            resources_per_worker={"CPU": train_cfg.cpus_per_worker},
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),  # val: every worker sees all of it
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=train_cfg.checkpoints_to_keep,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            callbacks=[EpochsToQueue(queue)],
        ),
    )
    result = fit_logging_epochs(trainer, queue, train_cfg.epochs)
    best = result.get_best_checkpoint(metric="val_loss", mode="min")
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    model = starting_classifier(loop_config)  # the frozen weights, as the workers started from
    with best.as_directory() as directory:
        load_trained_state(model, torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=True)["model"])
    model.eval()
    with result.checkpoint.as_directory() as directory:  # the last epoch's state holds the whole history
        history = torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=True)["state"]["history"]
    logger.info("training done: best epoch %s, val_loss %.4f, val_accuracy %.4f",
                best_metrics["epoch"], best_metrics["val_loss"], best_metrics["val_accuracy"])
    return ImageTrainingResult(model, dict(best_metrics), history, best.path)


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
