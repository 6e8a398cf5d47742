"""The typed model card: one load/save, old folders still load, newer or broken ones are refused clearly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from asl_platform.model import ModelCard, ModelCardError, Predictor, build_classifier, load_model_dir, save_model_dir
from asl_platform.model.card import FORMAT_VERSION

# Written by asl-platform before the typed card (format 1, 2026-11-30): a pipeline export with the
# keys it had then (hyperparameters, last_stage), kept so that every later version proves it loads.
FORMAT1 = Path(__file__).parent / "fixtures" / "format1-pipeline"


def test_a_model_folder_written_before_the_typed_card_still_loads_and_predicts(tmp_path):
    folder = shutil.copytree(FORMAT1, tmp_path / "old")
    model, card = load_model_dir(folder / "v1")
    assert card.format_version == FORMAT_VERSION and card.version == "v1" and card.classes == ["A", "B", "space"]
    assert card.backbone == "tiny" and card.unfreeze_last_stage and card.head.hidden_size == 8
    assert card.head.dropout == pytest.approx(0.1) and card.data.root == "/data/smoke"
    assert card.config["model"]["hidden_size"] == 8 and card.metrics["best_epoch"] == 2
    predictor = Predictor(folder / "v1")
    assert predictor.preprocessing.image_size == 64
    probabilities = predictor.predict_with_hands([Image.new("RGB", (70, 50), (200, 10, 10))])[0]
    assert probabilities.shape == (1, 3) and abs(probabilities.sum() - 1) < 1e-5
    raw = json.loads((FORMAT1 / "v1" / "model.json").read_text())
    assert raw["format_version"] == 1 and "hyperparameters" in raw  # the fixture really is the old format


def test_save_and_load_round_trip_every_field(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("tiny", "none", 2, 4, 0.25).eval()
    saved = save_model_dir(model, tmp_path / "v3", ["A", "B"], version="v3", metrics={"test_accuracy": 0.75},
                           checkpoint="/ckpt/3", config={"data": {"seed": 1}})
    loaded = ModelCard.load(tmp_path / "v3")
    assert loaded == saved and loaded.head.dropout == 0.25 and loaded.checkpoint == "/ckpt/3"
    with pytest.raises(ValueError, match="3 class names for a head with 2 outputs"):
        save_model_dir(model, tmp_path / "bad", ["A", "B", "C"])


def test_nan_metrics_round_trip(tmp_path):
    """No readable test image gives NaN test metrics: the folder must still load (NaN, not null)."""
    torch.manual_seed(0)
    save_model_dir(build_classifier("tiny", "none", 2, 4, 0.0), tmp_path, ["A", "B"],
                   metrics={"test_accuracy": float("nan"), "val_accuracy": 0.5})
    _, card = load_model_dir(tmp_path)
    assert math.isnan(card.metrics["test_accuracy"]) and card.metrics["val_accuracy"] == 0.5


def test_newer_unknown_or_broken_cards_are_refused_with_the_reason(tmp_path):
    torch.manual_seed(0)
    save_model_dir(build_classifier("tiny", "none", 2, 4, 0.0), tmp_path, ["A", "B"])
    path = tmp_path / "model.json"
    card = json.loads(path.read_text())
    path.write_text(json.dumps({**card, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ModelCardError, match="upgrade asl-platform"):
        load_model_dir(tmp_path)
    path.write_text(json.dumps({**card, "colour": "red"}))
    with pytest.raises(ModelCardError, match="colour"):
        load_model_dir(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model_dir(tmp_path)


def test_format1_train_exports_keep_their_checkpoint():
    raw = json.loads((FORMAT1 / "v1" / "model.json").read_text())
    raw.pop("hyperparameters"), raw.pop("last_stage")
    card = ModelCard.from_json_dict({**raw, "training": {"checkpoint": "/ray/train-1/checkpoint_0"}})
    assert card.checkpoint == "/ray/train-1/checkpoint_0"


def test_a_format5_cards_temperature_of_the_shots_alone_is_not_read_as_the_calibrations(tmp_path):
    """Format 6 thresholds each answer and fits the temperature of the product of model and shots; a format 5
    card's temperature was of the shots alone: dropped on load (serving then uses the default), the rest kept."""
    torch.manual_seed(0)
    save_model_dir(build_classifier("tiny", "none", 2, 4, 0.0), tmp_path, ["A", "B"])
    card = json.loads((tmp_path / "model.json").read_text())
    old = {"threshold": 0.48, "target_precision": 0.98, "chosen_on": "the validation split", "precision": 0.98,
           "coverage": 0.7, "temperature": 0.05, "calibrated_precision": 0.9, "calibrated_coverage": 0.4}
    loaded = ModelCard.from_json_dict({**card, "format_version": 5, "confidence": old})
    assert loaded.confidence.threshold == 0.48 and loaded.confidence.temperature is None
    assert loaded.confidence.live_threshold is None and loaded.confidence.calibrated_precision is None
    from asl_platform.serving.backends import confidence_threshold

    info = {"confidence": loaded.confidence.model_dump()}
    assert confidence_threshold(info, "live") == confidence_threshold(info, "calibrated") == 0.48  # the one it has


def test_a_format6_cards_calibration_images_are_read_as_its_quantization_images(tmp_path):
    torch.manual_seed(0)
    save_model_dir(build_classifier("tiny", "none", 2, 4, 0.0), tmp_path, ["A", "B"])
    card = json.loads((tmp_path / "model.json").read_text())
    onnx = {"opset": 17, "onnxruntime": "1.22", "fp32_file": "model.onnx", "int8_file": "model.int8.onnx",
            "calibration_images": 300, "int8_usable": True, "int8_verdict": "kept its accuracy"}
    loaded = ModelCard.from_json_dict({**card, "format_version": 6, "onnx": onnx})
    assert loaded.onnx.quantization_images == 300 and "calibration_images" not in loaded.onnx.model_dump()
