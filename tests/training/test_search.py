"""Real Ray Tune: ASHA early stopping, the best config round trip, the feature cache, resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from helpers import paced

from asl_platform.config import load_config
from asl_platform.data.decode import Preprocessing
from asl_platform.data.listing import list_images
from asl_platform.data.synthetic import make_smoke_dataset
from asl_platform.model import BACKBONES
from asl_platform.stages.features import extract_features
from asl_platform.training.search import run_search, searched_values, write_results

PACED = Path(paced.__file__)


def _blobs(n_per_class: int, classes: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, 1.0, (len(y), dim))).astype(np.float32), y.astype(np.int64)


def test_asha_stops_trials_early_and_the_best_config_round_trips(ray_local, tmp_path):
    train, val = _blobs(30, 5, seed=0), _blobs(10, 5, seed=1)
    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", "tune.num_samples=8", "tune.max_epochs=9",
                             "tune.grace_period=1", "tune.reduction_factor=3", "tune.seed=3",
                             f"run.storage_path={tmp_path / 'ray'}"])
    best_config, rows, _ = run_search({"kind": "features", "train": train, "val": val, "num_classes": 5}, cfg)
    best = SimpleNamespace(**searched_values(best_config.model_dump()))  # lr, eps, ..., dropout

    assert len(rows) == 8
    assert any(row["stopped_early"] for row in rows), rows
    assert any(row["epochs"] == 9 for row in rows)
    assert rows[0]["best_val_loss"] == min(row["best_val_loss"] for row in rows)
    assert best.lr == pytest.approx(rows[0]["lr"]) and best.batch_size == rows[0]["batch_size"]

    assert best_config.model.backbone == "tiny" and best_config.tune == cfg.tune  # the rest of the config is the run's
    path = write_results(rows, best_config, tmp_path / "out")
    reloaded = load_config(path)  # usable directly as --config
    assert reloaded.train.lr == pytest.approx(best.lr) and reloaded.train.eps == pytest.approx(best.eps)
    assert reloaded.train.weight_decay == pytest.approx(best.weight_decay)
    assert reloaded.train.batch_size == best.batch_size
    assert reloaded.model.hidden_size == best.hidden_size and reloaded.model.dropout == pytest.approx(best.dropout)
    assert reloaded.model.backbone == "tiny"
    table = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert len(table) == 9 and "stopped_early" in table[0]


def test_feature_cache_hits_and_misses_when_preprocessing_changes(ray_local, tmp_path, monkeypatch):
    root = make_smoke_dataset(tmp_path / "smoke", per_class=2, classes=["A", "B", "C"])
    index = list_images(str(root))
    cache = tmp_path / "cache"
    first = extract_features(index, "tiny", "none", cache, batch_size=4)
    again = extract_features(index, "tiny", "none", cache, batch_size=4)
    assert not first.from_cache and again.from_cache
    assert len(list(cache.iterdir())) == 1

    spec = BACKBONES["tiny"]
    monkeypatch.setitem(BACKBONES, "tiny", dataclasses.replace(spec, preprocessing=Preprocessing(48, spec.preprocessing.mean, spec.preprocessing.std)))
    changed = extract_features(index, "tiny", "none", cache, batch_size=4)
    assert not changed.from_cache
    assert len(list(cache.iterdir())) == 2


def _finished_trials(experiment: Path, max_epochs: int) -> dict[str, tuple[int, int]]:
    """Trial folder -> (result lines, mtime) for trials that ran all their epochs."""
    finished = {}
    for result in experiment.glob("*/result.json"):
        lines = result.read_text().splitlines()
        if lines and json.loads(lines[-1])["training_iteration"] == max_epochs:
            finished[result.parent.name] = (len(lines), result.stat().st_mtime_ns)
    return finished


@pytest.mark.e2e
@pytest.mark.own_ray
def test_interrupted_search_resumes_without_redoing_finished_trials(tmp_path):
    """Two trials finish, the third holds at its first epoch (tests/helpers/paced.py: on any machine the search is
    caught mid-run), Ctrl+C; --resume then finishes only the trials that had not finished."""
    epochs, samples = 4, 4
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"backbone": "tiny", "weights": "none"},
        "data": {"val_fraction": 0.2, "test_fraction": 0.2},
        "tune": {"num_samples": samples, "max_epochs": epochs, "grace_period": epochs, "max_concurrent_trials": 1},
        "run": {"name": "resume"},
    }))
    script = shutil.which("asl-platform") or str(Path(sys.executable).parent / "asl-platform")
    experiment, hold_dir = tmp_path / "asl_runs" / "resume" / "ray" / "tune", tmp_path / "hold"
    process = subprocess.Popen([sys.executable, str(PACED), "--hold-dir", str(hold_dir), "--hold", "2", "--at-report", "1",
                                "--", "asl-platform", "tune", "--config", str(config)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (len(_finished_trials(experiment, epochs)) == 2 and paced.holding(hold_dir)) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the search ended before it could be interrupted: " + process.stdout.read()[-2000:]
    time.sleep(2)  # time enough for Tune to start another trial, were tune.max_concurrent_trials not honoured
    assert sorted(p.name for p in hold_dir.glob("started-*")) == ["started-0", "started-1", "started-2"]
    process.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves the experiment state and stops
    process.communicate(timeout=120)
    paced.release(hold_dir)
    before = _finished_trials(experiment, epochs)
    assert 2 <= len(before) < samples

    resumed = subprocess.run([script, "tune", "--config", str(config), "--resume"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert "resuming the search" in resumed.stderr
    after = _finished_trials(experiment, epochs)
    assert len(after) == samples
    for trial, state in before.items():
        assert after[trial] == state, f"finished trial {trial} was run again"
    trials = json.loads((tmp_path / "asl_runs" / "resume" / "tune" / "trials.json").read_text())
    assert len(trials) == samples and all("best_val_loss" in row for row in trials)


def test_resume_without_an_earlier_search_is_a_clear_error(tmp_path):
    script = shutil.which("asl-platform") or str(Path(sys.executable).parent / "asl-platform")
    result = subprocess.run([script, "tune", "--resume", "--backbone", "tiny", "--set", "model.weights=none"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "no interrupted search to resume" in result.stderr and "Traceback" not in result.stderr


def test_full_image_trials_run_the_backbone_with_augmentation(ray_local, tmp_path):
    """tune.mode=images: trials train on image files (augmented), for users who want that."""
    root = make_smoke_dataset(tmp_path / "smoke", per_class=4, classes=["A", "B", "C"])
    index = list_images(str(root))
    files = {"train": ([], []), "val": ([], [])}
    for i, (path, label) in enumerate(zip(index.paths, index.labels)):
        split = "val" if i % 4 == 0 else "train"
        files[split][0].append(path)
        files[split][1].append(label)
    (root / "A" / "broken.png").write_bytes(b"not an image")  # skipped by the trial, not a crash
    files["train"][0].append(str(root / "A" / "broken.png"))
    files["train"][1].append(0)
    data = {"kind": "images", "train_files": files["train"], "val_files": files["val"], "num_classes": 3}
    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", "model.unfreeze_last_stage=true",
                             "tune.mode=images", "tune.num_samples=2", "tune.max_epochs=2", "tune.grace_period=1",
                             "tune.batch_size=[4]", "tune.hidden_size=[8]", f"run.storage_path={tmp_path / 'ray'}"])
    best, rows, _ = run_search(data, cfg)
    assert len(rows) == 2 and all("best_val_loss" in row and row["epochs"] >= 1 for row in rows), rows
    assert 0.0 <= rows[0]["best_val_accuracy"] <= 1.0 and best.train.batch_size == 4
