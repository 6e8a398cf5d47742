"""End to end: the real `asl-platform` CLI through real local Ray, on the built-in smoke set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asl_platform.data import decode_image, list_images, stratified_split
from asl_platform.model import Predictor


def run_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed `asl-platform` console script, as the README tells users to."""
    script = shutil.which("asl-platform") or str(Path(sys.executable).parent / "asl-platform")
    return subprocess.run([script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_pipeline_on_the_smoke_set_exports_a_working_model(tmp_path):
    """No arguments: synthetic data, EfficientNet-Lite0, tune, Ray Train retrain, evaluate, export."""
    result = run_cli("pipeline", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for stage in ("[1/6] ingest", "[2/6] features", "[3/6] tune", "[4/6] retrain", "[5/6] evaluate", "[6/6] export"):
        assert stage in result.stderr, stage
    assert "SYNTHETIC SMOKE SET" in result.stdout and "test accuracy" in result.stdout

    run_dir = tmp_path / "asl_runs" / "smoke"
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    # 29 classes: chance is 3.4%; the drawn class names are easy for ImageNet features.
    assert metrics["test_accuracy"] >= 0.6, metrics
    assert (run_dir / "tune" / "trials.csv").is_file()
    trials = json.loads((run_dir / "tune" / "trials.json").read_text())
    assert len(trials) == 6 and any(t["stopped_early"] for t in trials)

    # The exported directory alone reproduces the reported test accuracy from raw image files.
    model_dir = Path(summary["model_dir"])
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["classes"][:3] == ["A", "B", "C"] and len(meta["classes"]) == 29
    assert meta["data"]["smoke_set"] is True
    index = stratified_split(list_images(str(tmp_path / "asl_runs" / "smoke-data")), 0.2, 0.2, 42)
    test_paths = [p for p, s in zip(index.paths, index.splits) if s == "test"]
    test_labels = np.asarray([y for y, s in zip(index.labels, index.splits) if s == "test"])
    predictor = Predictor(model_dir)
    predicted = predictor.predict_images([decode_image(Path(p).read_bytes()) for p in test_paths]).argmax(1)
    assert len(test_paths) == metrics["test_images"]
    assert abs((predicted == test_labels).mean() - metrics["test_accuracy"]) <= 1.5 / len(test_paths)

    # A second run reuses the cached features.
    again = run_cli("pipeline", "--set", "tune.num_samples=2", "--set", "train.epochs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "feature cache hit" in again.stderr
    rerun = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert rerun["best_epoch"] <= 2  # a fresh retrain, not the first run's checkpoints


def test_cli_reports_bad_config_clearly(tmp_path):
    result = run_cli("pipeline", "--set", "train.lr=-1", "--set", "data.colour=red", cwd=tmp_path)
    assert result.returncode == 2
    assert "train.lr" in result.stderr and "greater than 0" in result.stderr
    assert "data.colour" in result.stderr and "unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_missing_data_root_clearly(tmp_path):
    result = run_cli("pipeline", "--data", str(tmp_path / "nope"), "--backbone", "tiny", "--set", "model.weights=none", cwd=tmp_path)
    assert result.returncode == 2
    assert "data root not found" in result.stderr and "Traceback" not in result.stderr
