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
from asl_platform.model import Predictor, resolve_model_dir


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
    # Progress of the retrain: rank 0 logs each epoch on its worker and Ray forwards it to this terminal,
    # once per epoch, without Ray Train's own per-report lines.
    output = result.stdout + result.stderr
    epochs = [line for line in output.splitlines() if "RayTrainWorker" in line and " epoch " in line and "/20:" in line]
    assert len(epochs) == metrics["epochs_run"] and "val accuracy" in epochs[0], epochs
    assert "Reporting training result" not in output
    # 29 classes: chance is 3.4%; the drawn class names are easy for ImageNet features.
    assert metrics["test_accuracy"] >= 0.6, metrics
    assert (run_dir / "tune" / "trials.csv").is_file()
    trials = json.loads((run_dir / "tune" / "trials.json").read_text())
    assert len(trials) == 6 and any(t["stopped_early"] for t in trials)

    # The exported directory alone reproduces the reported test accuracy from raw image files.
    model_dir = Path(summary["model_dir"])
    assert model_dir == resolve_model_dir(tmp_path / "asl_runs" / "models" / "smoke")  # versioned, `latest` names it
    assert (model_dir / "README.md").is_file() and (model_dir / "test_split.txt").is_file()
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


@pytest.mark.e2e
def test_pipeline_with_unfreeze_last_stage_trains_and_exports_the_last_stage(tmp_path):
    """model.unfreeze_last_stage: activations before the last stage are cached once, the head is tuned
    on pooled features from them, the last stage + head are retrained on them, and the exported model
    (unfreeze_last_stage, trained last stage in its backbone) reproduces the test metrics from images."""
    import torch

    from asl_platform.data import load_image
    from PIL import Image

    from asl_platform.model import build_backbone, get_backbone_spec, load_model_dir, split_backbone

    # Noisy colour patches (one colour per class): learnable from the tiny random backbone's activations.
    rng, root = np.random.default_rng(0), tmp_path / "data"
    for label, colour in {"A": (200, 40, 40), "B": (40, 180, 40), "C": (40, 40, 200), "space": (128, 128, 128)}.items():
        (root / label).mkdir(parents=True)
        for i in range(30):
            pixels = np.clip(rng.normal(colour, 60, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    args = ("pipeline", "--data", str(root), "--backbone", "tiny", "--set", "model.weights=none",
            "--set", "model.unfreeze_last_stage=true", "--set", "model.hidden_size=32", "--set", "tune.num_samples=2",
            "--set", "tune.max_epochs=4", "--set", "tune.lr=[0.003, 0.01]", "--set", "tune.hidden_size=[32]",
            "--set", "train.epochs=8", "--set", "train.last_stage_lr_factor=0.3", "--set", "run.name=last")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "ignored" not in result.stderr
    assert "activations before its last stage" in result.stderr and "last stage + head" in result.stderr
    cache = list((tmp_path / "asl_runs" / "cache" / "features").glob("tiny-trunk-*"))
    assert len(cache) == 1 and json.loads((cache[0] / "meta.json").read_text())["shape"] == [32, 16, 16]

    summary = json.loads((tmp_path / "asl_runs" / "last" / "summary.json").read_text())
    metrics = summary["metrics"]
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 8
    model_dir = Path(summary["model_dir"])
    model, card = load_model_dir(model_dir)
    assert card.unfreeze_last_stage is True and card.config["train"]["last_stage_lr_factor"] == 0.3

    # The trunk is the pretrained one the activations came from; the last stage was trained.
    trunk, tail = split_backbone("tiny", build_backbone("tiny", "none"))
    exported_trunk, exported_tail = split_backbone("tiny", model.backbone)
    for mine, pretrained in zip(exported_trunk.state_dict().values(), trunk.state_dict().values()):
        assert torch.equal(mine, pretrained)
    assert any(not torch.equal(m, p) for m, p in zip(exported_tail.parameters(), tail.parameters()))

    # The exported directory alone reproduces the reported test accuracy and loss from the image files
    # (activations are cached as float16: predictions from images may differ by a rounding hair).
    index = stratified_split(list_images(str(root)), 0.15, 0.15, 42)
    test = [(p, y) for p, y, s in zip(index.paths, index.labels, index.splits) if s == "test"]
    labels = np.asarray([y for _, y in test])
    size = get_backbone_spec("tiny").preprocessing.image_size
    probabilities = Predictor(model_dir).predict_images([load_image(p, draft_size=size) for p, _ in test])
    assert len(test) == metrics["test_images"]
    assert abs((probabilities.argmax(1) == labels).mean() - metrics["test_accuracy"]) <= 1.5 / len(test)
    loss = float(np.mean(-np.log(probabilities[np.arange(len(test)), labels])))
    assert loss == pytest.approx(metrics["test_loss"], rel=1e-2)
    assert metrics["test_accuracy"] >= 0.6, metrics  # 4 classes: chance is 25%


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
