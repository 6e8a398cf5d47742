"""Training: the head-on-features loop (shared with Tune trials) and the Ray Train retrain.

The backbone is frozen, so training the classifier is training its head on the cached backbone
features. That loop is plain PyTorch (``fit_head``); Ray Tune runs it once per trial and Ray Train's
TorchTrainer runs it data-parallel for the final retrain, with a checkpoint every epoch.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from asl_platform.model import build_head

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


def evaluate_head(head: nn.Module, features: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``head`` on feature vectors."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    head.eval()
    device = next(head.parameters()).device
    total_loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            x = torch.from_numpy(features[start:start + batch_size]).to(device)
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
) -> Iterator[dict]:
    """Train ``head`` with AdamW; yield metrics after every epoch (callers report/checkpoint)."""
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
            loss = nn.functional.cross_entropy(head(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(batch)
            seen += len(batch)
        val_loss, val_accuracy = evaluate_head(head, *val)
        yield {"epoch": epoch, "train_loss": running / max(seen, 1), "val_loss": val_loss, "val_accuracy": val_accuracy}


# --------------------------------------------------------------------------- Ray Train retrain


def _retrain_loop(config: dict) -> None:
    """Runs on every Ray Train worker: each takes its rank's slice of the training features."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])
    hp = HeadHyperparams.from_mapping(config["hp"])
    x_train, y_train = ray.get(config["train"])
    val = ray.get(config["val"])
    usable = len(y_train) // world * world  # equal shards: DDP needs the same number of steps
    x_train, y_train = x_train[rank:usable:world], y_train[rank:usable:world]
    head = build_head(x_train.shape[1], config["num_classes"], hp.hidden_size, hp.dropout)
    optimizer = make_optimizer(head, hp)
    start_epoch = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resumed after a failure: continue from the last finished epoch, same optimizer state
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / "head.pt", weights_only=True)
            head.load_state_dict(saved["head"])
            optimizer.load_state_dict(saved["optimizer"])
            start_epoch = saved["epoch"] + 1
    model = ray.train.torch.prepare_model(head)
    remaining = config["epochs"] - start_epoch + 1
    epochs = fit_head(model, (x_train, y_train), val, hp, remaining, seed=config["seed"] + start_epoch, optimizer=optimizer)
    for metrics in epochs:
        metrics["epoch"] = epoch = metrics["epoch"] + start_epoch - 1
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = {"head": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
                torch.save(state, Path(tmp) / "head.pt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


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
) -> tuple[nn.Sequential, dict]:
    """Retrain the head with Ray Train; return the head of the best epoch (lowest val loss)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _retrain_loop,
        train_loop_config={  # the arrays travel once, through the object store
            "train": ray.put(train), "val": ray.put(val), "num_classes": num_classes, "hp": asdict(hp),
            "epochs": epochs, "seed": seed,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    result = trainer.fit()
    best_checkpoint = result.get_best_checkpoint(metric="val_loss", mode="min")
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best_checkpoint.path)
    head = build_head(train[0].shape[1], num_classes, hp.hidden_size, hp.dropout)
    with best_checkpoint.as_directory() as directory:
        head.load_state_dict(torch.load(Path(directory) / "head.pt", weights_only=True)["head"])
    head.eval()
    logger.info("retrain done: best epoch %s, val_loss %.4f, val_accuracy %.4f",
                best_metrics["epoch"], best_metrics["val_loss"], best_metrics["val_accuracy"])
    return head, dict(best_metrics)
