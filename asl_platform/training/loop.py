"""The one training loop, in the style of torchvision's ``references/classification``: one
``train_one_epoch`` and one ``evaluate`` over any iterable of ``(inputs, labels)`` batches (cached
features, cached trunk activations, image shards), one ``EarlyStopping``, and one checkpoint format.

Tune trials, the pipeline's Ray Train retrain and ``asl-platform train`` all run ``fit``; they differ
only in where batches come from (``training.sources``) and which model is built (``training.recipe``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn

from asl_platform.model import load_trained_state, trained_state

Batch = tuple[torch.Tensor, torch.Tensor]
CHECKPOINT_FILE = "checkpoint.pt"


class BatchSource(Protocol):
    """Where one epoch's batches come from; ``epoch`` numbers let a source reshuffle each epoch."""

    def batches(self, epoch: int) -> Iterable[Batch]: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch], *,
    label_smoothing: float = 0.0, amp: bool = False,
) -> dict[str, float]:
    """One pass over ``batches``; returns this worker's loss sum, images, and time spent waiting for data."""
    model.train()
    device_type = next(unwrap(model).parameters()).device.type
    started = waiting_since = time.perf_counter()
    waiting, loss_sum, images = 0.0, 0.0, 0
    for inputs, labels in batches:
        waiting += time.perf_counter() - waiting_since
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(inputs), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        images += len(labels)
        waiting_since = time.perf_counter()
    return {"loss_sum": loss_sum, "images": images, "seconds": time.perf_counter() - started, "data_wait_seconds": waiting}


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[Batch], *, amp: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``batches`` (NaN for no batches)."""
    model.eval()
    device_type = next(model.parameters()).device.type
    loss_sum, correct, images = 0.0, 0, 0
    for inputs, labels in batches:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            logits = model(inputs).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        images += len(labels)
    if images == 0:
        return {"loss": math.nan, "accuracy": math.nan, "images": 0}
    return {"loss": loss_sum / images, "accuracy": correct / images, "images": images}


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation score (``None``: never; ``fit``'s ``val_score``)."""

    patience: int | None
    best_loss: float = math.inf
    stale_epochs: int = 0
    stopped: bool = False

    def update(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when training should stop now."""
        if val_loss < self.best_loss:
            self.best_loss, self.stale_epochs = val_loss, 0
        else:
            self.stale_epochs += 1
        self.stopped = self.patience is not None and self.stale_epochs >= self.patience
        return self.stopped


@dataclass
class TrainingState:
    """Everything besides weights that a resumed run needs: where it was, early stopping, the history."""

    early_stopping: EarlyStopping
    epoch: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> Path:
    """The one checkpoint format: what training changes (never the frozen backbone), the optimizer,
    early stopping and the history (so a resumed run reports every epoch exactly once)."""
    path = Path(directory) / CHECKPOINT_FILE
    torch.save({"model": trained_state(unwrap(model)), "optimizer": optimizer.state_dict(), "epoch": state.epoch,
                "early_stopping": asdict(state.early_stopping), "history": state.history}, path)
    return path


def read_checkpoint(directory: str | Path) -> dict:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def restore(model: nn.Module, saved: dict) -> TrainingState:
    """Load a checkpoint's weights into ``model`` (the optimizer's state is loaded by the caller,
    once the model is on its device) and return the state to continue from."""
    load_trained_state(unwrap(model), saved["model"])
    return TrainingState(EarlyStopping(**saved["early_stopping"]), saved["epoch"], list(saved["history"]))


def fit(
    model: nn.Module, optimizer: torch.optim.Optimizer, train: BatchSource | Sequence[BatchSource],
    val: BatchSource | Sequence[BatchSource | None], *,
    epochs: int, state: TrainingState, label_smoothing: float = 0.0, amp: bool = False,
    reduce: Callable[[list[float]], list[float]] = lambda values: values,
) -> Iterator[dict]:
    """Train from ``state.epoch + 1`` to ``epochs``, yielding each epoch's metrics after updating
    ``state`` (the caller reports and checkpoints). ``reduce`` sums per-worker training totals
    across a data-parallel group; validation is scored whole on every worker, so all of them see
    the same metrics and stop together.

    Choosing on held-out people (``data.people``): ``model`` is an ``nn.ModuleList`` of members trained in
    lockstep and ``train``, ``val`` hold a source per member: member i trains on ``train[i]`` and is scored
    on ``val[i]`` (None: not scored, e.g. the model of everyone beside the models of each fold). The epoch's
    ``val_loss`` and ``val_accuracy`` are the means over the scored members, each holding one group out:
    every person weighs the same, and early stopping and the search see how the recipe does on new people.

    ``val_score`` (lower is better) is what early stopping, the best checkpoint and the search's best trial
    go by: the validation loss, or with members the error on held-out people (1 - ``val_accuracy``). On
    people a model has not seen the loss mostly measures over-confidence: it rose after an epoch or two for
    the image model while its accuracy was flat (about 17% at any epoch) and its in-domain accuracy grew from
    69% to 92%, and after 20 epochs for the landmark model while its accuracy still rose; the accuracy is the
    score the cross-domain sets are reported in."""
    held_out = isinstance(train, (list, tuple))
    members = list(zip(unwrap(model), train, val)) if held_out else [(model, train, val)]
    for epoch in range(state.epoch + 1, epochs + 1):
        loss_sum = images = seconds = waiting = 0.0
        scored = []
        for member, source, held_out in members:
            trained = train_one_epoch(member, optimizer, source.batches(epoch), label_smoothing=label_smoothing, amp=amp)
            member_loss, member_images = reduce([trained["loss_sum"], trained["images"]])
            loss_sum, images = loss_sum + member_loss, images + member_images
            seconds, waiting = seconds + trained["seconds"], waiting + trained["data_wait_seconds"]
            if held_out is not None:
                scored.append(evaluate(unwrap(member), held_out.batches(epoch), amp=amp))
        if not scored or any(s["images"] == 0 for s in scored):
            raise RuntimeError("no readable validation images")
        val_loss = sum(s["loss"] for s in scored) / len(scored)
        metrics = {
            "epoch": epoch, "train_loss": loss_sum / max(images, 1), "val_loss": val_loss,
            "val_accuracy": sum(s["accuracy"] for s in scored) / len(scored), "train_images": int(images),
            "train_seconds": seconds, "data_wait_seconds": waiting, "images_per_second": images / max(seconds, 1e-9),
        }
        metrics["val_score"] = 1.0 - metrics["val_accuracy"] if held_out else val_loss
        metrics["early_stop"] = state.early_stopping.update(metrics["val_score"])
        state.epoch = epoch
        state.history.append(metrics)
        yield metrics
        if metrics["early_stop"]:
            break
