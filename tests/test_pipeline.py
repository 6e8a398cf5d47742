"""End to end: the real `asl-platform` CLI through real local Ray, on the built-in smoke set."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asl_platform.config import InferenceConfig
from asl_platform.data.decode import decode_image
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.model import Predictor, resolve_model_dir


def run_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed `asl-platform` console script, as the README tells users to."""
    script = shutil.which("asl-platform") or str(Path(sys.executable).parent / "asl-platform")
    return subprocess.run([script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def tracebacks_through_our_code(stderr: str) -> list[str]:
    """Traceback frames in the platform's own files, raised or "Exception ignored", from the driver or a
    worker. Ray's own teardown noise (a trial ASHA stopped getting SIGTERM inside a weakref callback; Train's
    placement-group cleaner when two local Rays run, as under pytest) does not count: it is not ours."""
    return [line for line in stderr.splitlines() if 'File "' in line and "asl_platform" in line]


@pytest.mark.e2e
@pytest.mark.own_ray
def test_pipeline_on_the_smoke_set_exports_a_working_model(tmp_path, monkeypatch):
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
    # The search's progress: a line per finished trial, never Tune's tables of every trial's whole config.
    trials = [line for line in output.splitlines() if "search: trial " in line]
    assert trials and " of " in trials[0] and "val_loss" in trials[-1] and "lr=" in trials[-1], trials
    assert "Current best trial" not in output and "Trial status" not in output
    assert "Reporting training result" not in output
    # 29 classes: chance is 3.4%; the drawn class names are easy for ImageNet features.
    assert metrics["test_accuracy"] >= 0.6, metrics
    assert (run_dir / "tune" / "trials.csv").is_file()
    trials = json.loads((run_dir / "tune" / "trials.json").read_text())
    assert len(trials) == 6 and any(t["stopped_early"] for t in trials)

    # Tracked in the default store (asl_runs/mlruns): the pipeline's run, a nested run per trial (its epochs),
    # the retrain, the evaluation and the export; the model folder registered as version 1 of run.name.
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = (tmp_path / "asl_runs" / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "pipeline"]
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sum(name.startswith("image trial") for name in nested) == 6, sorted(nested)
    assert {"image retrain", "evaluate", "export"} <= set(nested) and parent.info.status == "FINISHED"
    assert parent.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    stopped = [r for name, r in nested.items() if name.startswith("image trial") and r.data.tags["stopped_early"] == "True"]
    assert len(stopped) == sum(t["stopped_early"] for t in trials)
    retrain = nested["image retrain"]
    assert len(client.get_metric_history(retrain.info.run_id, "val_loss")) == metrics["epochs_run"]
    (version,) = client.search_model_versions("name='smoke'")
    assert version.source == str(Path(summary["model_dir"]).resolve()) and version.version in (1, "1")

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
    # fp32 ONNX (what serves where int8 is refused) gives torch's answers: the reported accuracy.
    predictor = Predictor(model_dir, inference=InferenceConfig(precision="fp32"))
    predicted = predictor.predict_with_hands([decode_image(Path(p).read_bytes()) for p in test_paths])[0].argmax(1)
    assert len(test_paths) == metrics["test_images"]
    assert abs((predicted == test_labels).mean() - metrics["test_accuracy"]) <= 1.5 / len(test_paths)
    # Both ONNX files, checked against torch on the test split, and the check recorded.
    assert (model_dir / "model.onnx").is_file() and (model_dir / "model.int8.onnx").is_file()
    onnx = meta["onnx"]
    assert onnx["scores"]["test"]["images"] == metrics["test_images"] and onnx["scores"]["test"]["fp32_agreement"] == 1.0
    assert onnx["scores"]["test"]["torch_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1.5 / len(test_paths))
    assert "int8" in onnx["int8_verdict"] and "ONNX Runtime fp32" in result.stderr  # the extraction ran on it

    # The same command again: nothing changed (config, files, code), so the latest model is the answer, in
    # seconds. (What changes the inputs' digest, and so trains again: tests/stages/test_ingest.py; a re-run
    # computing only new files' features: tests/stages/test_features.py.)
    same = run_cli("pipeline", cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-5000:]
    assert "nothing changed since" in same.stderr and "[2/6] features" not in same.stderr
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["reused"] is True and again["model_dir"] == summary["model_dir"]
    assert again["metrics"] == summary["metrics"] and "reused" in same.stdout


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


@pytest.mark.e2e
@pytest.mark.own_ray
@pytest.mark.real_data
def test_hand_aware_pipeline_chooses_on_validation_measures_cross_domain_and_every_tool_uses_it(tmp_path, asl_alphabet):
    """model.kind=hand_aware on real photos of one signer and of many (a few per class of each, asl-signers
    lacking del/nothing/space): the hands stage, two ASHA searches and two Ray Train retrains scored on
    held-out people (the one signer, asl-signers' photos, each person its file names name), every fusion
    rule scored there with each group weighing the same and the best one exported, the "not sure"
    threshold chosen there too, the cross-domain folder measured (never chosen on) and recorded; then
    evaluate (calibrated per folder and per person) and predict-batch answer as the card says, with hand
    numbers."""
    from helpers.datasets import ASL_PEOPLE, ASL_SIGNERS, ASL_WEBCAM, require_dataset

    from asl_platform.model import ModelCard

    webcam, signers, people = require_dataset(ASL_WEBCAM), require_dataset(ASL_SIGNERS), require_dataset(ASL_PEOPLE)
    cross = tmp_path / "cross"
    for label in ("A", "B", "L", "V", "Y", "nothing"):
        (cross / label).mkdir(parents=True)
        for photo in sorted((webcam / label).iterdir())[:6]:
            (cross / label / photo.name).symlink_to(photo)
    args = ("pipeline", "--data", str(asl_alphabet), "--data", str(signers), "--backbone", "tiny", "--set", "model.weights=none",
            "--set", "model.kind=hand_aware", "--set", "data.max_images_per_class=8", "--set", "tune.num_samples=2",
            "--set", "tune.max_epochs=3", "--set", "tune.grace_period=1", "--set", "train.epochs=3",
            "--set", "hands.epochs=3", "--set", f"data.cross_domain_root={cross}", "--set", "hands.augment_tilt_deg=20",
            "--set", "run.name=hands")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for stage in ("[3/7] hands", "[4/7] tune", "[5/7] retrain", "[7/7] export"):
        assert stage in result.stderr, stage
    assert "cross-domain  :" in result.stdout and "hand found in" in result.stdout
    assert (tmp_path / "asl_runs" / "hands" / "tune-landmarks" / "best_config.yaml").is_file()
    # One hands cache for these detection settings, a row per file: the training folders' and the cross-domain's.
    assert len(list((tmp_path / "asl_runs" / "cache" / "hands").glob("hands-*"))) == 1
    assert re.search(r"hands: 0 of 36 image\(s\) cached in .*, 36 to detect", result.stderr)  # the cross-domain folder

    model_dir = resolve_model_dir(tmp_path / "asl_runs" / "models" / "hands")
    card = ModelCard.load(model_dir)
    assert card.kind == "hand_aware" and (model_dir / "landmarks.safetensors").is_file()
    assert card.hands.augment["augment_tilt_deg"] == 20 and card.hands.detection.mediapipe
    assert set(card.fusion.scores) == {"image", "landmarks|nothing", "landmarks|image", "average|image"}
    assert card.fusion.scores[card.fusion.rule] == max(card.fusion.scores.values())
    assert {"lr", "batch_size", "hidden_size"} <= set(card.hands.searched)  # the landmark search's own choice
    assert card.hands.head.hidden_size == card.hands.searched["hidden_size"]
    validation = card.validation
    assert validation.mode == "people" and card.fusion.selected_on == validation.chosen_on
    assert validation.chosen_on.startswith(f"held-out people: each of the {len(validation.groups)} groups")
    assert {"asl-alphabet", "asl-signers"} <= set(validation.groups) and len(validation.groups) >= 4  # + people
    assert sum(validation.groups.values()) == 8 * 29 + 8 * 26
    assert set(validation.per_group) <= set(validation.groups) and "asl-alphabet" in validation.per_group
    assert card.data.split["val"] == 0  # no validation split: the groups are held out instead
    assert [Path(source.root).name for source in card.data.sources] == ["asl-alphabet", "asl-signers"]
    assert "del" in card.classes and card.data.sources[1].images == 8 * 26  # the classes of both folders
    assert set(card.fusion.cross_domain_scores) == set(card.fusion.scores)  # measured, for the record
    metrics = card.metrics
    assert metrics["cross_domain_accuracy"] == pytest.approx(card.fusion.cross_domain_scores[card.fusion.rule])
    confidence = card.confidence
    assert 0 <= confidence.threshold < 1 and confidence.target_precision == 0.98
    assert confidence.chosen_on == validation.chosen_on
    # The temperature of calibrated answers needs more than SIMULATED_SHOTS hands of a letter in a folder's
    # validation split (8 images per class leave one or two); without, serving uses its default.
    assert (confidence.temperature is None) == (confidence.calibrated_coverage is None)
    assert 0 <= metrics["cross_domain_coverage"] <= 1
    assert metrics["cross_domain_images"] == 36 and 0 < metrics["cross_domain_hand_found"] <= 1
    assert {"test_accuracy", "test_accuracy_image", "test_hand_found"} <= set(metrics)
    assert card.hands.detection_rate.get("nothing", 0.0) <= 0.5
    # Practice mode's typical hands: from the training split's hands, one per letter with any.
    from asl_platform.hands.shapes import load_shapes

    shapes = load_shapes(model_dir)
    assert shapes and set(shapes) == set(card.hands.shapes) and "B" in shapes
    assert all(shapes[name].images == count and count >= 1 for name, count in card.hands.shapes.items())
    readme = (model_dir / "README.md").read_text()
    assert "Hand-aware" in readme and "cross-domain (other people)" in readme

    # evaluate: the answer of the exported rule, with detection rates and accuracy with/without a hand, the
    # confident answers, and a calibration of 2 images per letter (the folder names no person: all of it).
    report_dir = tmp_path / "eval"
    evaluated = run_cli("evaluate", "--model", str(model_dir), "--data", str(cross), "--output", str(report_dir),
                        "--calibration-shots", "2", "--calibration-draws", "3", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    report = json.loads(next(report_dir.glob("*.json")).read_text())
    assert report["accuracy"] == pytest.approx(metrics["cross_domain_accuracy"], abs=1e-9)  # the same answers
    assert report["coverage"] == pytest.approx(metrics["cross_domain_coverage"], abs=1e-9)
    assert report["confidence_threshold"] == confidence.threshold
    calibration = report["calibration"]
    assert (calibration["shots"], calibration["draws"], calibration["calibrated_per"]) == (2, 3, "the whole folder")
    found_per_class = [round(r * 6) for name, r in report["hands"]["detection_rate"].items()]
    assert calibration["images_answered"] == 36 - sum(min(2, n - 1) for n in found_per_class if n > 1)
    assert 0 <= calibration["accuracy"] <= 1 and 0 <= calibration["accuracy_uncalibrated"] <= 1
    assert "calibrated with 2 image(s) per letter" in evaluated.stdout
    hands = report["hands"]
    assert hands["hand_found"] == pytest.approx(metrics["cross_domain_hand_found"], abs=1e-9)
    assert hands["images_with_hand"] + hands["images_without_hand"] == 36
    assert set(hands["detection_rate"]) == {"A", "B", "L", "V", "Y", "nothing"}
    assert "Hand found" in next(report_dir.glob("*.md")).read_text()

    # asl-people's file names say whose frame it is: 2 shots per letter of each person's own frames.
    persons = tmp_path / "people"
    for label in ("A", "L", "Y"):
        (persons / label).mkdir(parents=True)
        for photo in sorted((people / label).iterdir()):
            if photo.name.split("-")[0] in ("mariia00", "adi3220"):
                (persons / label / photo.name).symlink_to(photo)
    per_person = run_cli("evaluate", "--model", str(model_dir), "--data", str(persons), "--output", str(tmp_path / "p"),
                         "--calibration-shots", "2", "--calibration-draws", "2", cwd=tmp_path)
    assert per_person.returncode == 0, per_person.stderr[-4000:]
    calibration = json.loads(next((tmp_path / "p").glob("*.json")).read_text())["calibration"]
    assert calibration["calibrated_per"] == "person (file-name prefix)"
    assert set(calibration["per_person"]) == {"mariia00", "adi3220"}
    assert calibration["worst_person_accuracy"] == min(calibration["per_person"].values())
    assert calibration["mean_person"] == pytest.approx(np.mean(list(calibration["per_person"].values())))
    assert "mean person" in per_person.stdout

    # predict-batch: a hand_found column beside the letters.
    out = tmp_path / "batch"
    batch = run_cli("predict-batch", "--model", str(model_dir), "--input", str(cross / "A"), "--output", str(out),
                    cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr[-4000:]
    import pyarrow.csv as pa_csv

    rows = pa_csv.read_csv(out / "predictions.csv").to_pylist()
    assert len(rows) == 6 and all(row["hand_found"] in (True, False) for row in rows)


@pytest.mark.e2e
@pytest.mark.own_ray
def test_pipeline_on_several_folders_with_the_last_stage_unfrozen_lists_them_and_exports_the_last_stage(tmp_path):
    """--data twice: classes matched by name (the second folder lacks one class and orders them otherwise),
    each folder split on its own, both listed with their counts in the model card. model.unfreeze_last_stage:
    activations before the last stage are cached once, the head is tuned on pooled features from them, the
    last stage + head are retrained on them, and the exported model (its trained last stage in its backbone)
    reproduces the test metrics from the image files. (One pipeline run checks both: each costs a minute.)"""
    import torch
    from PIL import Image

    from asl_platform.data.reading import load_image
    from asl_platform.model import ModelCard, build_backbone, get_backbone_spec, load_model_dir, split_backbone

    # Noisy colour patches (one colour per class): learnable from the tiny random backbone's activations.
    rng = np.random.default_rng(0)
    colours = {"A": (200, 40, 40), "B": (40, 180, 40), "C": (40, 40, 200)}
    for folder, labels, count in (("kaggle", ("A", "B", "C"), 20), ("mine", ("C", "A"), 10)):
        for label in labels:
            (tmp_path / folder / label).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(colours[label], 50, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / folder / label / f"{folder}{i}.png")
    result = run_cli("pipeline", "--data", str(tmp_path / "kaggle"), "--data", str(tmp_path / "mine"),
                     "--backbone", "tiny", "--set", "model.weights=none", "--set", "model.unfreeze_last_stage=true",
                     "--set", "model.hidden_size=32", "--set", "tune.num_samples=2", "--set", "tune.max_epochs=4",
                     "--set", "tune.grace_period=1", "--set", "tune.lr=[0.003, 0.01]", "--set", "tune.hidden_size=[32]",
                     "--set", "train.epochs=8", "--set", "train.last_stage_lr_factor=0.3", "--set", "run.name=two",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert not tracebacks_through_our_code(result.stderr)
    assert "activations before its last stage" in result.stderr and "last stage + head" in result.stderr
    cache = list((tmp_path / "asl_runs" / "cache" / "features").glob("tiny-trunk-*"))
    assert len(cache) == 1 and json.loads((cache[0] / "meta.json").read_text())["shapes"]["features"] == [32, 16, 16]

    model_dir = resolve_model_dir(tmp_path / "asl_runs" / "models" / "two")
    card = ModelCard.load(model_dir)
    assert card.classes == ["A", "B", "C"]
    assert [(Path(s.root).name, s.images) for s in card.data.sources] == [("kaggle", 60), ("mine", 20)]
    # 15% of 10 images rounds to 2 per class, of 20 to 3: each folder split on its own. The two folders
    # name no person, so each is one group of people, held out in turn: no validation split is drawn.
    assert card.data.sources[1].split == {"train": 16, "val": 0, "test": 4}
    assert card.data.split == {"train": 67, "val": 0, "test": 13}
    assert card.validation.mode == "people" and card.validation.groups == {"kaggle": 60, "mine": 20}
    assert set(card.validation.per_group) == {"kaggle", "mine"} and card.confidence.chosen_on == card.validation.chosen_on
    test_files = (model_dir / "test_split.txt").read_text().split()
    assert sum("/mine/" in f for f in test_files) == 4 and len(test_files) == 13
    assert "2 folders" in (model_dir / "README.md").read_text()

    # The last stage: the trunk is the pretrained one the activations came from; the last stage was trained.
    metrics = card.metrics
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 8
    model, loaded = load_model_dir(model_dir)
    assert loaded.unfreeze_last_stage is True and loaded.config["train"]["last_stage_lr_factor"] == 0.3
    trunk, tail = split_backbone("tiny", build_backbone("tiny", "none"))
    exported_trunk, exported_tail = split_backbone("tiny", model.backbone)
    for mine, pretrained in zip(exported_trunk.state_dict().values(), trunk.state_dict().values()):
        assert torch.equal(mine, pretrained)
    assert any(not torch.equal(m, p) for m, p in zip(exported_tail.parameters(), tail.parameters()))

    # The exported directory alone reproduces the reported test accuracy and loss from the image files
    # (activations are cached as float16: predictions from images may differ by a rounding hair).
    labels = np.asarray([card.classes.index(Path(f).parent.name) for f in test_files])
    size = get_backbone_spec("tiny").preprocessing.image_size
    probabilities = Predictor(model_dir, inference=InferenceConfig(runtime="torch")).predict_with_hands(
        [load_image(f, draft_size=size) for f in test_files])[0]
    assert len(test_files) == metrics["test_images"]
    assert abs((probabilities.argmax(1) == labels).mean() - metrics["test_accuracy"]) <= 1.5 / len(test_files)
    loss = float(np.mean(-np.log(probabilities[np.arange(len(test_files)), labels])))
    assert loss == pytest.approx(metrics["test_loss"], rel=1e-2)
    assert metrics["test_accuracy"] >= 0.6, metrics  # 3 classes: chance is 33%

    # evaluate --split test takes both folders back and finds exactly the held-out images.
    evaluated = run_cli("evaluate", "--model", str(model_dir), "--data", str(tmp_path / "kaggle"),
                        "--data", str(tmp_path / "mine"), "--split", "test", "--output", str(tmp_path / "eval"),
                        cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    report = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    assert report["images"] == 13 and report["accuracy"] == pytest.approx(card.metrics["test_accuracy"], abs=1e-6)

    # export-onnx rebuilds the ONNX files and their check for a folder without them (an older export).
    first = loaded.onnx
    for name in ("model.onnx", "model.int8.onnx"):
        (model_dir / name).unlink()
    (model_dir / "model.json").write_text(json.dumps({k: v for k, v in json.loads((model_dir / "model.json").read_text()).items()
                                                      if k != "onnx"}))
    again = run_cli("export-onnx", "--model", str(model_dir), "--quantization-images", "40", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rebuilt = load_model_dir(model_dir)[1].onnx
    assert (model_dir / "model.int8.onnx").is_file() and rebuilt.quantization_images == 40
    assert rebuilt.scores["test"].images == first.scores["test"].images == metrics["test_images"]
    assert rebuilt.scores["test"].torch_accuracy == first.scores["test"].torch_accuracy
    assert "int8" in again.stdout and "test (" in again.stdout
