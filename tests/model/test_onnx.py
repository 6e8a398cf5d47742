"""ONNX Runtime inference: export parity with torch on real photos, int8 refused when it loses
accuracy, and the runtime setting honoured (or refused) by the Predictor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import alphabet_photos
from helpers.models import fixture_model, train_head
from PIL import Image

from asl_platform.config import ConfigError, InferenceConfig
from asl_platform.model import Predictor, load_model_dir
from asl_platform.model.card import ModelCard, RuntimeScores
from asl_platform.model.onnx import FP32_FILE, INT8_FILE
from asl_platform.stages.onnx_export import export_onnx, int8_verdict

LETTERS = ["A", "B", "C", "L", "Y"]


@pytest.fixture(scope="module")
def photo_model(request, tmp_path_factory, asl_alphabet) -> tuple[Path, dict[str, tuple[list[str], np.ndarray]], list[str]]:
    """A real model: ImageNet EfficientNet-Lite0 and a head trained in-process on asl-alphabet photos of
    five letters. Returns its folder (no ONNX files yet), held-out photos by set, and training photos."""
    train, held_out = [], []
    for label in LETTERS:
        photos = [str(p) for p in alphabet_photos(asl_alphabet, label, 36)]
        train += [(p, LETTERS.index(label)) for p in photos[:20]]
        held_out += [(p, LETTERS.index(label)) for p in photos[20:]]
    directory = fixture_model(request, tmp_path_factory, "photos", lambda folder: build_photo_model(folder, train),
                              inputs=[Path(p) for p, _ in train], code=[Path(__file__)])
    sets = {"test": ([p for p, _ in held_out], np.asarray([y for _, y in held_out], dtype=np.int64), None)}
    return directory, sets, [p for p, _ in train]


def build_photo_model(directory: Path, train: list[tuple[str, int]]) -> None:
    import torch

    from asl_platform.data.decode import preprocess_images
    from asl_platform.data.reading import load_image
    from asl_platform.model import build_classifier, get_backbone_spec, save_model_dir

    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes=len(LETTERS), hidden_size=64, dropout=0.0)
    prep = get_backbone_spec("efficientnet_lite0").preprocessing
    images = [load_image(p, draft_size=prep.image_size) for p, _ in train]
    with torch.inference_mode():
        features = model.backbone(torch.from_numpy(preprocess_images(images, prep))).numpy()
    data = (features, np.asarray([y for _, y in train], dtype=np.int64))
    train_head(model.head, data, data, lr=1e-2, batch_size=20, epochs=30)
    save_model_dir(model.eval(), directory, LETTERS, version="v1")


@pytest.fixture(scope="module")
def exported(request, photo_model, ray_local, tmp_path_factory) -> Path:
    """``photo_model`` with its ONNX files, exported and checked as the pipeline does."""
    source, sets, train = photo_model

    def build(directory: Path) -> None:
        shutil.copytree(source, directory, dirs_exist_ok=True)
        model, card = load_model_dir(directory)
        # Any int8 loss accepted here, so that every test below has an int8 file to run (the rule itself is
        # tested on its own and with a wrecked calibration).
        card.onnx = export_onnx(directory, model, card, train, sets, InferenceConfig(
            quantization_images=60, int8_max_accuracy_drop=1.0, fp32_check_images=32))
        card.save(directory)

    return fixture_model(request, tmp_path_factory, "photos-onnx", build, folder="photos", code=[Path(__file__)],
                         inputs=[Path(p) for p in [*train, *sets["test"][0]]])


def test_fp32_onnx_agrees_with_torch_on_real_photos_and_int8_is_checked(exported, photo_model):
    card = ModelCard.load(exported)
    assert (exported / FP32_FILE).is_file() and (exported / INT8_FILE).is_file()
    test = card.onnx.scores["test"]
    assert test.images == len(photo_model[1]["test"][0]) == 80  # torch and int8: every image
    assert test.fp32_images == 32 and test.fp32_agreement == 1.0  # fp32: exact, on the seeded sample
    assert test.torch_accuracy >= 0.9  # a real model, so that agreement means something
    assert test.int8_agreement >= 0.9
    assert card.onnx.int8_usable and "int8 is within 100.00 points of the model's accuracy on test" in card.onnx.int8_verdict
    assert "fp32 top-1 as torch's on 100.00% of a sample of 32" in test.summary()  # the model README's line
    assert card.onnx.quantization_images == 60


def test_the_predictor_runs_what_inference_says(exported, photo_model):
    from asl_platform.data.reading import load_image

    torch_run = Predictor(exported, inference=InferenceConfig(runtime="torch"))
    fp32 = Predictor(exported, inference=InferenceConfig(precision="fp32", threads=1))
    assert (torch_run.runtime_name, fp32.runtime_name) == ("torch", "onnxruntime fp32")
    images = [load_image(p) for p in photo_model[1]["test"][0][:16]]
    reference = torch_run.predict_with_hands(images)[0]
    np.testing.assert_allclose(fp32.predict_with_hands(images)[0], reference, atol=1e-4)
    assert fp32.model is None  # the session holds the weights: no second copy in memory
    int8 = Predictor(exported)  # auto: int8 where the card allows it
    assert int8.runtime_name == "onnxruntime int8"
    assert np.abs(int8.predict_with_hands(images)[0] - reference).max() > 1e-4  # really another graph
    with pytest.raises(ConfigError, match="CPU only"):
        Predictor(exported, device="cuda", inference=InferenceConfig(runtime="onnxruntime"))
    with pytest.raises(ConfigError, match="needs inference.runtime onnxruntime"):
        Predictor(exported, inference=InferenceConfig(runtime="torch", precision="int8"))


def test_a_model_exported_before_onnx_is_converted_on_load(photo_model):
    from asl_platform.data.reading import load_image

    directory = photo_model[0]
    assert not (directory / FP32_FILE).exists()
    converted = Predictor(directory)
    assert converted.runtime_name == "onnxruntime fp32"
    images = [load_image(p) for p in photo_model[1]["test"][0][:8]]
    np.testing.assert_allclose(converted.predict_with_hands(images)[0],
                               Predictor(directory, inference=InferenceConfig(runtime="torch")).predict_with_hands(images)[0],
                               atol=1e-4)
    with pytest.raises(ConfigError, match="exported before ONNX export"):
        Predictor(directory, inference=InferenceConfig(precision="int8"))


def test_int8_is_refused_when_its_quantization_images_wreck_it(photo_model, ray_local, tmp_path):
    """Its ranges measured on black frames, int8 clips every real activation: export must see the loss and
    refuse it, and the Predictor must then run fp32 (auto) and refuse an explicit int8."""
    source, sets, _ = photo_model
    directory = tmp_path / "photos" / "v1"
    shutil.copytree(source, directory)
    black = []
    for i in range(8):
        black.append(str(tmp_path / f"black{i}.png"))
        Image.new("RGB", (224, 224)).save(black[-1])
    model, card = load_model_dir(directory)
    card.onnx = export_onnx(directory, model, card, black, sets, InferenceConfig(quantization_images=8))
    card.save(directory)
    test = card.onnx.scores["test"]
    assert test.torch_accuracy - test.int8_accuracy > 0.005, test
    assert not card.onnx.int8_usable and "fp32 is used" in card.onnx.int8_verdict
    assert Predictor(directory).runtime_name == "onnxruntime fp32"
    with pytest.raises(ConfigError, match="refused for this model: int8 loses"):
        Predictor(directory, inference=InferenceConfig(precision="int8"))


def _scores(model: float, int8: float, images: int = 100) -> RuntimeScores:
    return RuntimeScores(images=images, torch_accuracy=model, fp32_accuracy=model, fp32_agreement=1.0,
                         int8_accuracy=int8, int8_agreement=0.99)


def test_fp32_is_scored_on_the_rows_it_ran_on_and_int8_against_the_model_on_every_row():
    from asl_platform.stages.onnx_export import fp32_sample, runtime_scores

    top1 = np.array([[0, 0, 0], [1, -1, 1], [2, 2, 0], [1, -1, 2]])  # columns torch, fp32 (-1: not run), int8
    scores = runtime_scores(top1, np.array([0, 1, 2, 2]))
    assert (scores.images, scores.fp32_images) == (4, 2)
    assert scores.torch_accuracy == 0.75 and scores.fp32_accuracy == 1.0 and scores.fp32_agreement == 1.0
    assert scores.int8_accuracy == 0.75 and scores.int8_agreement == 0.5
    paths = [f"p{i}" for i in range(50)]
    assert fp32_sample(paths, 10, seed=3) == fp32_sample(paths, 10, seed=3) != fp32_sample(paths, 10, seed=4)
    assert len(set(fp32_sample(paths, 10, seed=3))) == 10 and fp32_sample(paths[:5], 10, seed=3) == paths[:5]
    usable, why = int8_verdict({"test": RuntimeScores(images=100, torch_accuracy=0.9, fp32_accuracy=0.5, fp32_agreement=0.5,
                                                      int8_accuracy=0.89, int8_agreement=0.95, fp32_images=10)}, 0.005)
    assert not usable and "int8 loses 1.00 points" in why  # against the model's 90%, not the fp32 sample's 50%


def test_int8_must_hold_on_every_set_scored():
    assert int8_verdict({"test": _scores(0.98, 0.976), "cross_domain": _scores(0.70, 0.701)}, 0.005)[0]
    usable, why = int8_verdict({"test": _scores(0.98, 0.978), "cross_domain": _scores(0.70, 0.69)}, 0.005)
    assert not usable and "1.00 points of accuracy on cross_domain" in why
    assert not int8_verdict({"test": _scores(0.5, 0.5, images=0)}, 0.005)[0]  # nothing to check it on


def test_the_runtime_setting_reaches_the_ray_data_actors_of_evaluate_and_predict_batch(exported, photo_model, tmp_path):
    """evaluate and predict-batch classify through ``predict_paths``' actors: each runtime gives its own
    probabilities there (fp32 = torch within float noise, int8 measurably not), and the report says which ran."""
    from asl_platform.batch_predict import predict_batch
    from asl_platform.inference import predict_paths
    from asl_platform.stages.evaluate import evaluate_folder

    paths = photo_model[1]["test"][0][::7]  # 12 photos across the five letters
    runs = {name: predict_paths(exported, paths, batch_size=4, inference=InferenceConfig(**keys))[0]
            for name, keys in {"torch": {"runtime": "torch"}, "fp32": {"precision": "fp32"}, "int8": {}}.items()}
    np.testing.assert_allclose(runs["fp32"], runs["torch"], atol=1e-4)
    assert np.abs(runs["int8"] - runs["torch"]).max() > 1e-4
    folder = tmp_path / "photos"
    for path in paths:
        (folder / Path(path).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / Path(path).parent.name / Path(path).name)
    assert evaluate_folder(exported, str(folder))["runtime"] == "onnxruntime int8"  # the default, where allowed
    import pyarrow.parquet as pq

    predict_batch(exported, str(folder), tmp_path / "out", batch_size=4)
    table = pq.read_table(next((tmp_path / "out").glob("predictions-*.parquet"))).to_pydict()
    by_path = dict(zip(table["path"], table["probability"]))
    copies = [str(folder / Path(p).parent.name / Path(p).name) for p in paths]
    np.testing.assert_allclose([by_path[p] for p in copies], runs["int8"].max(axis=1), atol=1e-5)  # int8's answers
