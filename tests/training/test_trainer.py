"""Ray Train on images: 2 data-parallel workers, a worker killed mid-run, the versioned export."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asl_platform.config import InferenceConfig
from asl_platform.data.decode import decode_image
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.data.synthetic import make_smoke_dataset
from asl_platform.model import Predictor, load_model_dir, resolve_model_dir

FP32 = InferenceConfig(precision="fp32")  # what reproduces torch's numbers (int8 may answer otherwise)


def _loop_killing_a_worker_mid_epoch(fault_dir: Path, kill_rank: int, kill_epoch: int, after_batches: int):
    """The real worker loop (``train_loop_per_worker``) with its train shard wrapped: each epoch's start is
    logged (pid, rank, epoch), and rank ``kill_rank`` SIGKILLs its own process after ``after_batches``
    training steps of epoch ``kill_epoch``, once (a marker file). Self-contained, because Ray pickles
    it by value to the workers, where this test module cannot be imported."""
    fault_dir = str(fault_dir)

    def loop(config: dict) -> None:
        import json
        import os
        import signal
        from pathlib import Path

        import ray.train
        import torch

        from asl_platform.training.worker import train_loop_per_worker

        rank, epoch = ray.train.get_context().get_world_rank(), 1
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as directory:
                epoch = torch.load(Path(directory) / "checkpoint.pt", weights_only=True)["epoch"] + 1
        log, marker = Path(fault_dir) / "epochs.jsonl", Path(fault_dir) / "killed.json"

        class Shard:
            def __init__(self, shard):
                self.shard = shard

            def iter_torch_batches(self, **kwargs):
                nonlocal epoch
                this, epoch = epoch, epoch + 1
                with log.open("a") as handle:
                    handle.write(json.dumps({"pid": os.getpid(), "rank": rank, "epoch": this}) + "\n")
                for step, batch in enumerate(self.shard.iter_torch_batches(**kwargs), 1):
                    yield batch
                    if (rank, this, step) == (kill_rank, kill_epoch, after_batches) and not marker.exists():
                        marker.write_text(json.dumps({"pid": os.getpid(), "epoch": this, "steps": step}))
                        os.kill(os.getpid(), signal.SIGKILL)  # after `step` optimizer steps of this epoch

        real = ray.train.get_dataset_shard
        ray.train.get_dataset_shard = lambda name: Shard(real(name)) if name == "train" else real(name)
        train_loop_per_worker(config)

    return loop


@pytest.mark.e2e
def test_a_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(ray_local, tmp_path, monkeypatch):
    """SIGKILL one of two workers after 2 of its ~4 steps in epoch 2: the driver goes on untouched, the
    worker group restarts from epoch 1's checkpoint, runs epochs 2 and 3 once each, and the exported
    model predicts what its test report says."""
    import asl_platform.training.trainer
    from asl_platform.config import load_config
    from asl_platform.pipeline import run_train

    epochs, driver = 3, os.getpid()
    monkeypatch.setattr(asl_platform.training.trainer, "train_loop_per_worker",
                        _loop_killing_a_worker_mid_epoch(tmp_path, kill_rank=1, kill_epoch=2, after_batches=2))
    root = make_smoke_dataset(tmp_path / "data", per_class=24, classes=["A", "B", "C", "space"])
    cfg = load_config(None, [
        "model.backbone=tiny", "model.weights=none", "model.hidden_size=16", "data.val_fraction=0.2",
        "data.test_fraction=0.2", "data.batch_size=8", f"train.epochs={epochs}", "train.num_workers=2",
        "train.cpus_per_worker=0.5", "train.batch_size=8", f"train.early_stopping_patience={epochs}",
        "train.max_failures=1", "run.name=midepoch",
    ], values={"data.root": str(root), "run.output_dir": str(tmp_path / "asl_runs")})
    summary = run_train(cfg)

    assert os.getpid() == driver  # the driver ran the whole job in this process: never restarted
    killed = json.loads((tmp_path / "killed.json").read_text())
    assert killed["pid"] != driver and (killed["epoch"], killed["steps"]) == (2, 2)
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    starts = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    first = {row["pid"] for row in starts if row["epoch"] == 1}
    assert killed["pid"] in first and len(first) == 2
    resumed = [row for row in starts if row["pid"] not in first]  # a new worker group, both ranks
    assert sorted((row["rank"], row["epoch"]) for row in resumed) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert summary["epochs"] == list(range(1, epochs + 1))  # every epoch reported once: none lost or doubled

    # Checkpoints hold what training changes (head, BatchNorm buffers), never the frozen backbone weights.
    from asl_platform.model import build_classifier

    model = build_classifier("tiny", "none", 4, 16, 0.0)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    head = {name for name, p in model.named_parameters() if p.requires_grad}
    checkpoints = list((tmp_path / "asl_runs" / "midepoch" / "ray").glob("train-*/checkpoint_*/checkpoint.pt"))
    assert checkpoints and frozen and head
    for path in checkpoints:
        saved = set(torch.load(path, weights_only=True)["model"])
        assert head <= saved and not saved & frozen, sorted(saved & frozen)[:5]

    version = resolve_model_dir(tmp_path / "asl_runs" / "models" / "midepoch")
    report = json.loads((version / "eval" / "test.json").read_text())
    test = (version / "test_split.txt").read_text().split()
    labels = np.array([report["classes"].index(Path(p).parent.name) for p in test])
    probabilities = Predictor(version, inference=FP32).predict_with_hands([decode_image(Path(p).read_bytes()) for p in test])[0]
    assert probabilities.shape == (len(test), 4) and np.isfinite(probabilities).all()
    assert report["accuracy"] == pytest.approx(float(np.mean(probabilities.argmax(1) == labels)))
    for name in ("README.md", "config.yaml", "model.safetensors", "test_split.txt", "eval/test.md", "eval/test_confusion.png"):
        assert (version / name).is_file(), name
    logs = list((tmp_path / "asl_runs" / "midepoch" / "tensorboard").iterdir())  # one folder per training run
    assert [d.name.startswith("train-") for d in logs] == [True] and any(logs[0].iterdir())


def test_versioned_exports_and_latest_pointer(tmp_path):
    from asl_platform.model import build_classifier, mark_latest, next_version_dir, save_model_dir

    models = tmp_path / "models"
    torch.manual_seed(0)
    first = build_classifier("tiny", "none", 3, 8, 0.0).eval()
    v1 = next_version_dir(models)
    save_model_dir(first, v1, ["A", "B", "C"], version=v1.name)
    mark_latest(v1)
    v2 = next_version_dir(models)
    assert (v1.name, v2.name) == ("v1", "v2")
    save_model_dir(build_classifier("tiny", "none", 3, 8, 0.0), v2, ["A", "B", "C"], version=v2.name)
    assert resolve_model_dir(models) == v1  # v2 is not 'latest' until it is marked complete
    mark_latest(v2)
    assert resolve_model_dir(models) == v2 and (models / "v1" / "model.safetensors").is_file()
    loaded, meta = load_model_dir(v1)
    batch = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(batch), first(batch))
    with pytest.raises(FileNotFoundError, match="latest"):
        resolve_model_dir(tmp_path / "nothing-here")


def test_too_many_worker_cpus_is_a_clear_error(ray_local, tmp_path):
    from asl_platform.config import load_config
    from asl_platform.errors import UserError
    from asl_platform.training.trainer import run_training

    root = make_smoke_dataset(tmp_path / "data", per_class=3, classes=["A", "B"])
    index = stratified_split(list_images(str(root)), 0.34, 0.0, 0)
    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", "train.num_workers=2",
                             f"run.storage_path={tmp_path / 'ray'}"])
    with pytest.raises(UserError, match="leave at least one CPU for Ray Data"):
        run_training(cfg, "images", 2, "too-big", index={"train": index.subset("train"), "val": index.subset("val")})


def test_warm_start_model_must_match_the_run(ray_local, tmp_path):
    from asl_platform.config import load_config
    from asl_platform.errors import UserError
    from asl_platform.model import build_classifier, save_model_dir
    from asl_platform.training.trainer import run_training

    root = make_smoke_dataset(tmp_path / "data", per_class=3, classes=["A", "B"])
    index = stratified_split(list_images(str(root)), 0.34, 0.0, 0)
    save_model_dir(build_classifier("tiny", "none", 2, 8, 0.0), tmp_path / "old", ["A", "B"])
    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", "model.hidden_size=16",
                             f"train.init_from={tmp_path / 'old'}", "train.cpus_per_worker=0.5",
                             f"run.storage_path={tmp_path / 'ray'}"])
    with pytest.raises(UserError, match="hidden_size differ"):
        run_training(cfg, "images", 2, "warm", index={"train": index.subset("train"), "val": index.subset("val")})


def _loop_failing_once(fault_dir: Path, fail_after_epoch: int, snapshot: Path):
    """The real ``train_loop_per_worker`` with ``ray.train.report`` wrapped: every report is logged (pid, epoch),
    and right after reporting epoch ``fail_after_epoch`` the worker raises, once (a marker file), as soon as
    Ray Train's checkpoint manager has registered that epoch's checkpoint (its ``snapshot`` file lists it).
    Self-contained: Ray pickles it by value to the workers, where this module cannot be imported."""
    fault_dir, snapshot = str(fault_dir), str(snapshot)

    def loop(config: dict) -> None:
        import json
        import os
        import time
        from pathlib import Path

        import ray.train

        from asl_platform.training.worker import train_loop_per_worker

        log, marker = Path(fault_dir) / "epochs.jsonl", Path(fault_dir) / "failed"
        real = ray.train.report

        def report(metrics, checkpoint=None, **kwargs):
            real(metrics, checkpoint=checkpoint, **kwargs)
            with log.open("a") as handle:
                handle.write(json.dumps({"pid": os.getpid(), "epoch": metrics["epoch"]}) + "\n")
            if metrics["epoch"] == fail_after_epoch and not marker.exists():
                marker.write_text("failed")
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:  # the controller registers a reported checkpoint a little later
                    try:
                        if len(json.loads(Path(snapshot).read_text())["checkpoint_results"]) >= fail_after_epoch:
                            break
                    except (OSError, ValueError, KeyError):  # not written yet, or being written
                        pass
                    time.sleep(0.05)
                raise RuntimeError("injected worker failure")

        ray.train.report = report
        train_loop_per_worker(config)

    return loop


def test_last_stage_retrain_checkpoints_tail_and_head_only_and_resumes(ray_local, tmp_path, monkeypatch):
    """Retraining the last stage on trunk activations: a worker failure after epoch 2 resumes from its
    checkpoint (epochs 3.. run once each), checkpoints hold the last stage + head (never the frozen
    trunk), and the result is the best epoch's last stage + head."""
    import asl_platform.training.trainer
    from asl_platform.config import load_config
    from asl_platform.model import LastStageClassifier, build_backbone, split_backbone
    from asl_platform.training.trainer import run_training

    monkeypatch.setattr(asl_platform.training.trainer, "train_loop_per_worker",
                        _loop_failing_once(tmp_path, fail_after_epoch=2,
                                           snapshot=tmp_path / "ray" / "last-stage" / "checkpoint_manager_snapshot.json"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    activations = (rng.random((96, 32, 16, 16)) + labels[:, None, None, None] * 0.3).astype(np.float32)
    train, val = (activations[:64], labels[:64]), (activations[64:], labels[64:])
    cfg = load_config(None, [
        "model.backbone=tiny", "model.weights=none", "model.unfreeze_last_stage=true", "model.hidden_size=8",
        "train.lr=3e-3", "train.batch_size=16", "train.epochs=4", "train.last_stage_lr_factor=0.5",
        "train.early_stopping_patience=10", f"run.storage_path={tmp_path / 'ray'}",
    ])
    trained = run_training(cfg, "activations", 3, "last-stage", arrays={"train": train, "val": val})
    model, metrics = trained.model, trained.best_metrics

    assert isinstance(model, LastStageClassifier) and not model.training
    assert len(trained.history) == 4 and 1 <= metrics["epoch"] <= 4
    reports = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    first = reports[0]["pid"]
    assert [r["epoch"] for r in reports if r["pid"] == first] == [1, 2]
    assert [r["epoch"] for r in reports if r["pid"] != first] == [3, 4]  # resumed, nothing run twice

    pretrained_tail = split_backbone("tiny", build_backbone("tiny", "none"))[1]
    checkpoints = sorted((tmp_path / "ray" / "last-stage").glob("checkpoint_*/checkpoint.pt"))
    assert checkpoints
    for path in checkpoints:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert set(saved) == {"model", "optimizer", "epoch", "early_stopping", "history"}  # the one format
        tail = {key.removeprefix("tail.") for key in saved["model"] if key.startswith("tail.")}
        assert tail == set(pretrained_tail.state_dict())  # the last stage only, not the trunk
        assert all(key.startswith(("tail.", "head.")) for key in saved["model"])
        assert [row["epoch"] for row in saved["history"]] == list(range(1, saved["epoch"] + 1))
        groups = saved["optimizer"]["param_groups"]  # the head at the searched lr, the last stage at lr x factor
        assert [len(g["params"]) for g in groups] == [4, 3]
        assert (groups[0]["lr"], groups[1]["lr"]) == pytest.approx((3e-3, 1.5e-3))
    with torch.inference_mode():
        logits = model(torch.from_numpy(val[0]))
    assert logits.shape == (32, 3) and torch.isfinite(logits).all()
    assert any(not torch.equal(a, b) for a, b in zip(model.tail.parameters(), pretrained_tail.parameters()))


def test_trained_state_leaves_out_the_frozen_backbone_and_loads_back_exactly():
    from asl_platform.model import build_classifier, load_trained_state, trained_state

    torch.manual_seed(1)
    trained = build_classifier("tiny", "none", 3, 8, 0.0)
    with torch.no_grad():
        for p in trained.head.parameters():
            p.add_(1.0)  # "training" changed the head
    state = trained_state(trained)
    assert all(not key.startswith("backbone.") or "running_" in key or "num_batches" in key for key in state), state.keys()

    fresh = build_classifier("tiny", "none", 3, 8, 0.0)  # what a resumed worker or the exporting driver builds
    load_trained_state(fresh, state)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="does not match"):
        load_trained_state(fresh, {k: v for k, v in state.items() if not k.startswith("head.")})
