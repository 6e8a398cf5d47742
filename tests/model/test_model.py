"""Backbone registry, weight loading (real files, no fakes), classifier freezing, model directories."""

from __future__ import annotations

import json
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import train_head
from helpers.s3 import upload_folder
from PIL import Image

from asl_platform.config import BACKBONE_NAMES
from asl_platform.data.decode import decode_image, preprocess_images
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.model import (
    BACKBONES,
    MODEL_CACHE_ENV,
    ASLClassifier,
    Predictor,
    WeightsUnavailableError,
    build_backbone,
    build_classifier,
    build_head,
    efficientnet_lite0_weights_file,
    get_backbone_spec,
    load_model_dir,
    model_location,
    resolve_model_dir,
    save_model_dir,
    split_backbone,
)


def test_registry_has_the_three_backbones_and_rejects_unknown():
    assert {"resnet50", "efficientnet_lite0", "tiny"} <= set(BACKBONES)
    assert tuple(BACKBONES) == BACKBONE_NAMES  # the config validates backbone names without importing torch
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*resnet50"):
        get_backbone_spec("vgg")


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0", "resnet50"])
def test_backbone_output_matches_declared_feature_dim(name):
    spec = get_backbone_spec(name)
    model = build_backbone(name, "none")
    size = spec.preprocessing.image_size
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, size, size))
    assert out.shape == (2, spec.feature_dim)


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0", "resnet50"])
def test_backbone_splits_into_trunk_and_last_stage_sharing_its_parameters(name):
    """tail(trunk(x)) == backbone(x); the tail's parameters are the backbone's own (same objects) and
    exactly its ``last_stage``, i.e. what ASLClassifier(unfreeze_last_stage=True) trains and exports."""
    spec = get_backbone_spec(name)
    torch.manual_seed(0)
    backbone = build_backbone(name, "none")
    trunk, tail = split_backbone(name, backbone)
    size = spec.preprocessing.image_size
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        activations = trunk(images)
        assert torch.allclose(tail(activations), backbone(images), rtol=1e-5, atol=1e-6)
    assert activations.dim() == 4 and activations.shape[0] == 2
    ids = lambda module: {id(p) for p in module.parameters()}  # noqa: E731
    assert ids(tail) == ids(spec.last_stage(backbone))
    assert ids(trunk) | ids(tail) == ids(backbone) and not ids(trunk) & ids(tail)
    classifier = ASLClassifier(name, backbone, build_head(spec.feature_dim, 3, 8, 0.0), unfreeze_last_stage=True)
    assert {id(p) for p in classifier.backbone.parameters() if p.requires_grad} == ids(tail)
    with torch.no_grad():  # writing the tail's state writes the backbone's
        next(tail.parameters()).add_(1.0)
    assert torch.equal(next(tail.parameters()), next(p for p in backbone.parameters() if id(p) in ids(tail)))


def test_random_weights_are_reproducible_and_leave_the_global_rng_alone():
    """model.weights=none must give the same trunk in the feature actors and in the exported model."""
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first, second = build_backbone("tiny", "none"), build_backbone("tiny", "none")
    assert torch.equal(torch.rand(1), expected)
    for key, tensor in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], tensor), key


def test_efficientnet_lite0_imagenet_weights_really_load():
    """Every tensor of the shipped ImageNet file lands in our model, unchanged (except the 1000-way fc)."""
    file_state = torch.load(efficientnet_lite0_weights_file(), map_location="cpu", weights_only=True)
    model_state = build_backbone("efficientnet_lite0", "imagenet").state_dict()
    expected = {f"net.{k}": v for k, v in file_state.items() if not k.startswith("_fc.")}
    assert set(model_state) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(model_state[key], tensor), key
    random_state = build_backbone("efficientnet_lite0", "none").state_dict()
    assert not torch.equal(random_state["net._conv_stem.weight"], expected["net._conv_stem.weight"])


def test_resnet50_imagenet_offline_is_a_clear_error_not_random_weights(tmp_path, monkeypatch):
    """No cache and no network: the error names the alternatives; nothing falls back silently."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    import torchvision.models._api

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet50", "imagenet")
    message = str(info.value)
    assert "efficientnet_lite0" in message and "model.weights" in message and str(tmp_path) in message


def test_backbone_weights_from_a_state_dict_file(tmp_path):
    source = build_backbone("tiny", "none")
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("tiny", str(path))
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)


def test_pickled_object_weights_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    with pytest.raises(WeightsUnavailableError, match="weights_only"):
        build_backbone("tiny", str(path))


def test_mismatched_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"unrelated.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsUnavailableError, match="does not match backbone 'tiny'"):
        build_backbone("tiny", str(path))


def test_tiny_has_no_imagenet_weights():
    with pytest.raises(WeightsUnavailableError, match="no ImageNet weights"):
        build_backbone("tiny", "imagenet")


def test_classifier_freezes_backbone_and_keeps_it_in_eval_mode():
    model = build_classifier("tiny", "none", num_classes=5, hidden_size=8, dropout=0.1)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert model.head.training and not model.backbone.training
    partly = build_classifier("tiny", "none", 5, 8, 0.1, unfreeze_last_stage=True)
    trainable = {n for n, p in partly.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("2.") for n in trainable)
    partly.train()  # pretrained BatchNorm statistics are kept even with the last stage unfrozen
    assert partly.head.training and not any(m.training for m in partly.backbone.modules())


def test_model_dir_round_trip_gives_identical_predictions(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("tiny", "none", num_classes=3, hidden_size=16, dropout=0.0).eval()
    classes = ["A", "B", "nothing"]
    save_model_dir(model, tmp_path / "m", classes, metrics={"test_accuracy": 0.5})
    loaded, card = load_model_dir(tmp_path / "m")
    assert card.classes == classes and card.backbone == "tiny" and card.metrics["test_accuracy"] == 0.5
    batch = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(batch), loaded(batch))
    predictor = Predictor(tmp_path / "m")
    images = [Image.new("RGB", (50, 80), (i * 60, 20, 200)) for i in range(3)]
    probabilities = predictor.predict_with_hands(images)[0]
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


def test_load_model_dir_rejects_a_folder_without_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model_dir(tmp_path)


def _models_folder(root: Path) -> Path:
    """A models folder as ``train`` and ``pipeline`` export one: v1, v2 (with an eval/ report), latest -> v2."""
    torch.manual_seed(0)
    for version in ("v1", "v2"):
        model = build_classifier("tiny", "none", num_classes=3, hidden_size=16, dropout=0.0).eval()
        save_model_dir(model, root / "smoke" / version, ["A", "B", "nothing"], version=version)
    (root / "smoke" / "v2" / "eval").mkdir()
    (root / "smoke" / "v2" / "eval" / "report.md").write_text("# report\n")
    (root / "smoke" / "latest").write_text("v2\n")
    return root / "smoke"


def test_a_model_on_s3_is_fetched_once_into_a_local_cache_and_predicts_the_same(tmp_path, monkeypatch, s3_server):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    cache = tmp_path / "cache"
    monkeypatch.setenv(MODEL_CACHE_ENV, str(cache))
    local = _models_folder(tmp_path / "local")
    uri = upload_folder(s3_server, local, "models", "runs/smoke")

    # Other processes are told the version folder: `latest` is read once, by whoever deploys.
    assert model_location(uri) == "s3://models/runs/smoke/v2"
    assert model_location(uri + "/v1/") == "s3://models/runs/smoke/v1"
    assert model_location(local) == str((local / "v2").resolve())

    fetched = resolve_model_dir(uri)
    assert fetched.is_relative_to(cache) and (fetched.parent.name, fetched.name) == ("smoke", "v2")  # name/version kept
    assert (fetched / "model.safetensors").read_bytes() == (local / "v2" / "model.safetensors").read_bytes()
    assert not (fetched / "eval").exists()  # only what loading needs
    images = [Image.new("RGB", (50, 80), (i * 60, 20, 200)) for i in range(3)]
    np.testing.assert_array_equal(Predictor(uri).predict_with_hands(images)[0], Predictor(local / "v2").predict_with_hands(images)[0])

    # Fetched once: a second resolve reuses the copy; no temporary folder is left behind.
    written = (fetched / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir(uri) == fetched and (fetched / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in fetched.parent.iterdir()] == ["v2"]

    # A version folder overwritten in place (new model.json) is fetched again, not served stale.
    meta = json.loads((local / "v2" / "model.json").read_text())
    (local / "v2" / "model.json").write_text(json.dumps({**meta, "metrics": {"test_accuracy": 0.75}}))
    upload_folder(s3_server, local, "models", "runs/smoke")
    refetched = resolve_model_dir(uri)
    assert refetched != fetched and json.loads((refetched / "model.json").read_text())["metrics"] == {"test_accuracy": 0.75}

    with pytest.raises(FileNotFoundError, match="not a model directory"):
        resolve_model_dir("s3://models/runs/no-such-model")

    # An upload caught half-way (model.json there, weights not yet) is refused and not cached as a model.
    partial = tmp_path / "partial" / "v1"
    partial.mkdir(parents=True)
    (partial / "model.json").write_text((local / "v1" / "model.json").read_text())
    upload_folder(s3_server, partial.parent, "models", "runs/partial")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        resolve_model_dir("s3://models/runs/partial/v1")
    (partial / "model.safetensors").write_bytes((local / "v1" / "model.safetensors").read_bytes())
    upload_folder(s3_server, partial.parent, "models", "runs/partial")
    assert (resolve_model_dir("s3://models/runs/partial/v1") / "model.safetensors").is_file()

    # A `latest` naming anything but a sibling version folder is refused.
    (partial.parent / "latest").write_text("../smoke/v2\n")
    upload_folder(s3_server, partial.parent, "models", "runs/partial")
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        model_location("s3://models/runs/partial")


@pytest.mark.real_data
def test_pretrained_features_separate_real_asl_classes_far_better_than_random(asl_alphabet):
    """Linear-probe style check on real images: ImageNet features must beat random ones by far."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    index = stratified_split(list_images(str(asl_alphabet), max_per_class=10, seed=0), 0.0, 4 / 10, seed=0)
    prep = get_backbone_spec("efficientnet_lite0").preprocessing
    images = preprocess_images([decode_image(open(p, "rb").read()) for p in index.paths], prep)
    labels = np.asarray(index.labels)
    train_mask = np.asarray(index.splits) == "train"

    def probe_accuracy(weights: str) -> float:
        backbone = build_backbone("efficientnet_lite0", weights)
        with torch.inference_mode():
            features = torch.cat([backbone(torch.from_numpy(images[i:i + 64])) for i in range(0, len(images), 64)]).numpy()
        head = build_head(features.shape[1], len(index.classes), 256, 0.0)
        history = train_head(head, (features[train_mask], labels[train_mask]), (features[~train_mask], labels[~train_mask]),
                             lr=3e-3, batch_size=32, epochs=40)
        return history[-1]["val_accuracy"]

    pretrained, random_init = probe_accuracy("imagenet"), probe_accuracy("none")
    print(f"linear probe on asl-alphabet: pretrained {pretrained:.3f}, random {random_init:.3f}")
    assert pretrained >= 0.6, pretrained
    assert pretrained >= random_init + 0.3, (pretrained, random_init)
