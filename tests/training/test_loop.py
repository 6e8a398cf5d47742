"""The one training loop: train_one_epoch/evaluate/fit, EarlyStopping, the checkpoint format, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asl_platform.model import build_head
from asl_platform.training.loop import (
    EarlyStopping,
    TrainingState,
    evaluate,
    fit,
    read_checkpoint,
    restore,
    save_checkpoint,
    train_one_epoch,
)
from asl_platform.training.sources import ArrayBatches

CPU = torch.device("cpu")


def _blobs(n: int = 40, classes: int = 3, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around fixed centres; ``seed`` draws other points from the same classes."""
    centres = np.random.default_rng(0).normal(0, 3, (classes, dim))
    y = np.repeat(np.arange(classes), n)
    noise = np.random.default_rng(seed + 1).normal(0, 1, (len(y), dim))
    return (centres[y] + noise).astype(np.float32), y.astype(np.int64)


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    head = build_head(8, 3, 16, 0.0)
    return head, torch.optim.AdamW(head.parameters(), lr=1e-2)


def test_early_stopping_counts_epochs_without_a_lower_loss():
    early = EarlyStopping(patience=2)
    assert [early.update(loss) for loss in (1.0, 0.9, 0.95, 0.92)] == [False, False, False, True]
    assert early.best_loss == 0.9 and early.stale_epochs == 2 and early.stopped
    never = EarlyStopping(patience=None)
    assert not any(never.update(1.0) for _ in range(10))


def test_train_one_epoch_and_evaluate_learn_separable_blobs():
    head, optimizer = _model_and_optimizer()
    train, val = ArrayBatches(*_blobs(), 16, CPU, shuffle=True), ArrayBatches(*_blobs(seed=1), 64, CPU)
    before = evaluate(head, val.batches(0))
    for epoch in range(1, 6):
        stats = train_one_epoch(head, optimizer, train.batches(epoch))
    after = evaluate(head, val.batches(0))
    assert stats["images"] == 120 and stats["seconds"] > 0
    assert after["loss"] < before["loss"] and after["accuracy"] >= 0.9 and after["images"] == 120
    assert math.isnan(evaluate(head, iter(()))["loss"])


def test_fit_stops_early_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Interrupt after epoch 2, restore model + optimizer + state from the checkpoint into fresh objects:
    the resumed run reports epochs 3.. once each and ends with exactly the weights of a run never stopped."""
    data, val = _blobs(), _blobs(seed=1)

    def run(epochs: int, state: TrainingState, head, optimizer):
        train, scored = ArrayBatches(*data, 16, CPU, shuffle=True, seed=7), ArrayBatches(*val, 64, CPU)
        return list(fit(head, optimizer, train, scored, epochs=epochs, state=state))

    head, optimizer = _model_and_optimizer()
    whole = run(5, TrainingState(EarlyStopping(None)), head, optimizer)

    first, first_optimizer = _model_and_optimizer()
    state = TrainingState(EarlyStopping(None))
    run(2, state, first, first_optimizer)
    save_checkpoint(tmp_path, first, first_optimizer, state)
    saved = read_checkpoint(tmp_path)
    assert set(saved) == {"model", "optimizer", "epoch", "early_stopping", "history"} and saved["epoch"] == 2

    resumed, resumed_optimizer = _model_and_optimizer(seed=123)  # different initial weights: all must come from the checkpoint
    resumed_state = restore(resumed, saved)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    later = run(5, resumed_state, resumed, resumed_optimizer)
    assert [m["epoch"] for m in later] == [3, 4, 5]
    assert [m["epoch"] for m in resumed_state.history] == [1, 2, 3, 4, 5]
    for mine, reference in zip(resumed.state_dict().values(), head.state_dict().values()):
        assert torch.allclose(mine, reference, atol=1e-6)
    assert later[-1]["val_loss"] == whole[-1]["val_loss"]

    stopping = TrainingState(EarlyStopping(patience=1, best_loss=-1.0))  # nothing can beat it: stop after one epoch
    assert [m["early_stop"] for m in run(5, stopping, *_model_and_optimizer())] == [True]


def test_array_batches_reshuffle_per_epoch_repeatably_and_add_noise_only_when_asked():
    x, y = _blobs(n=10)
    plain = ArrayBatches(x, y, 8, CPU, shuffle=True, seed=1)
    order = lambda source, epoch: torch.cat([labels for _, labels in source.batches(epoch)]).tolist()
    assert order(plain, 1) == order(ArrayBatches(x, y, 8, CPU, shuffle=True, seed=1), 1)
    assert order(plain, 1) != order(plain, 2) and sorted(order(plain, 1)) == sorted(y.tolist())
    unshuffled = next(iter(ArrayBatches(x, y, 30, CPU).batches(1)))[0]
    assert torch.equal(unshuffled, torch.from_numpy(x[:30]))
    activations = np.ones((6, 4, 3, 3), dtype=np.float16)
    noisy = next(iter(ArrayBatches(activations, np.zeros(6), 6, CPU, noise=0.1).batches(1)))[0]
    assert noisy.dtype == torch.float32 and not torch.all(noisy == 1)
    assert torch.all(noisy == noisy[:, :, :1, :1])  # one factor per example and channel, not per pixel


def test_weighted_rows_are_drawn_in_proportion_to_their_weights_repeatably():
    """Training rows with weights (data.balance_sources): an epoch draws as many rows as there are, with
    replacement, each row as often as its weight says; seeded like the shuffle."""
    y = np.asarray([0] * 90 + [1] * 10)
    x = np.zeros((100, 2), dtype=np.float32)
    weights = np.where(y == 0, 1 / 90, 1 / 10)  # the two groups weigh the same
    batches = ArrayBatches(x, y, 50, CPU, shuffle=True, seed=2, weights=weights)
    drawn = torch.cat([labels for epoch in range(20) for _, labels in batches.batches(epoch)])
    assert len(drawn) == 2000 and abs(float(drawn.float().mean()) - 0.5) < 0.05
    first = lambda source: torch.cat([labels for _, labels in source.batches(3)]).tolist()  # noqa: E731
    assert first(batches) == first(ArrayBatches(x, y, 50, CPU, shuffle=True, seed=2, weights=weights))
    with pytest.raises(ValueError, match="one per row"):
        ArrayBatches(x, y, 50, CPU, weights=weights)  # unshuffled (evaluation) batches take no weights


def test_the_last_stage_learns_under_bfloat16_autocast_and_keeps_float32_weights():
    """``train.precision`` on a CPU: activations come channels-last (the layout the last stage is built
    in), the loss falls, and what is trained, checkpointed and exported stays float32."""
    from asl_platform.config import load_config
    from asl_platform.training import recipe

    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", "model.hidden_size=16", "model.dropout=0"])
    torch.manual_seed(0)
    model = recipe.build_model(cfg, "activations", 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 16)
    x = (rng.normal(0, 1, (3, 32, 1, 1))[y] + rng.normal(0, 0.5, (len(y), 32, 16, 16))).astype(np.float16)
    train, val = ArrayBatches(x, y, 16, CPU, shuffle=True), ArrayBatches(x, y, 48, CPU)
    inputs = next(iter(train.batches(1)))[0]
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    before = evaluate(model, val.batches(0), amp=True)
    for epoch in range(1, 6):
        train_one_epoch(model, optimizer, train.batches(epoch), amp=True)
    after = evaluate(model, val.batches(0), amp=True)
    assert after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_members_trained_in_lockstep_learn_as_if_each_were_trained_alone_and_are_scored_on_their_held_out_group():
    """Choosing on held-out people: one AdamW over the members, each member trained on its own rows, is the
    same as training each alone; the epoch's validation is the mean over the scored members (every held-out
    group weighs the same however many images it has), and the model of everyone is not scored."""
    from torch import nn

    from asl_platform.data.people import leave_one_group_out
    from asl_platform.training.sources import member_sources

    x, y = _blobs(n=30)
    groups = np.asarray(["a", "b", "c"] * 30)
    groups[:10] = "a"  # groups of different sizes
    folds = leave_one_group_out(groups, y)

    def fresh(count):
        members = []
        for _ in range(count):
            torch.manual_seed(0)
            members.append(build_head(8, 3, 16, 0.0))
        return nn.ModuleList(members)

    members = fresh(1 + len(folds))
    optimizer = torch.optim.AdamW(members.parameters(), lr=1e-2)
    train, val = member_sources(x, y, folds, 16, CPU, seed=3)
    assert val[0] is None and [len(v) for v in val[1:]] == [len(rows) for rows in folds.val]
    history = list(fit(members, optimizer, train, val, epochs=3, state=TrainingState(EarlyStopping(None))))

    for number, rows in enumerate([None, *folds.train]):
        torch.manual_seed(0)
        alone = build_head(8, 3, 16, 0.0)
        source = ArrayBatches(x, y, 16, CPU, shuffle=True, seed=3, rows=rows)
        list(fit(alone, torch.optim.AdamW(alone.parameters(), lr=1e-2), source, ArrayBatches(x, y, 64, CPU),
                 epochs=3, state=TrainingState(EarlyStopping(None))))
        for mine, its in zip(members[number].parameters(), alone.parameters()):
            assert torch.allclose(mine, its, atol=1e-6), number
    scored = [evaluate(member, source.batches(0)) for member, source in zip(members[1:], val[1:])]
    assert history[-1]["val_loss"] == pytest.approx(np.mean([s["loss"] for s in scored]))
    assert history[-1]["val_accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in scored]))
    assert history[-1]["train_images"] == len(y) + sum(len(rows) for rows in folds.train)
