"""Every train.* key reaches what trains, or is refused where it would do nothing; the config
travels whole to Ray Train workers and Tune trials; the optimizer and model per kind of input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asl_platform.config import Config, ConfigError, TrainConfig, load_config
from asl_platform.model import ASLClassifier, LastStageClassifier
from asl_platform.training import recipe
from asl_platform.training.search import param_space
from asl_platform.training.trainer import build_trainer

DEFAULTS = TrainConfig()
# A valid value other than the default for every key of the train section.
CHANGED = {
    "lr": 0.02, "eps": 2e-8, "weight_decay": 0.05, "batch_size": 32, "epochs": 7, "num_workers": 2,
    "cpus_per_worker": 0.5, "torch_threads": 2, "use_gpu": True, "augment": False, "early_stopping_patience": 5,
    "last_stage_lr_factor": 0.3, "last_stage_label_smoothing": 0.05, "last_stage_feature_noise": 0.2,
    "init_from": "/models/earlier", "checkpoints_to_keep": 4, "max_failures": 1, "seed": 9, "precision": "float32",
}
# Where each kind of training gets its Ray Train settings from (checked on the real TorchTrainer).
TRAINER = {
    "num_workers": lambda t: t.scaling_config.num_workers,
    "use_gpu": lambda t: t.scaling_config.use_gpu,
    "cpus_per_worker": lambda t: t.scaling_config.resources_per_worker["CPU"],
    "checkpoints_to_keep": lambda t: t.run_config.checkpoint_config.num_to_keep,
    "max_failures": lambda t: t.run_config.failure_config.max_failures,
}
COMMANDS = {  # (kind, searched, model.unfreeze_last_stage): pipeline features, pipeline last stage, train, train + last stage
    "pipeline": ("features", True, False), "pipeline-last-stage": ("activations", True, True),
    "train": ("images", False, False), "train-last-stage": ("images", False, True),
}


def test_every_train_key_is_listed_here():
    assert set(CHANGED) == set(TrainConfig.model_fields), "a new train.* key needs a case in this test"
    assert all(getattr(DEFAULTS, key) != value for key, value in CHANGED.items())


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("key", sorted(CHANGED))
def test_every_train_key_reaches_the_trainer_or_is_refused(ray_local, command, key):
    """Set each key to a non-default value: either the command refuses it before any work (naming the
    key), or the value is in the config every Ray Train worker validates, and where the driver uses it
    (Ray Train's scaling, checkpoint and failure settings, the optimizer, the loss) it has its effect."""
    kind, searched, unfreeze = COMMANDS[command]
    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", f"model.unfreeze_last_stage={unfreeze}"],
                      values={f"train.{key}": CHANGED[key]})
    try:
        recipe.check_train_keys(cfg, kind, searched)
    except ConfigError as exc:
        assert f"train.{key}=" in str(exc)
        return
    rng = np.random.default_rng(0)
    inputs = rng.random((8, 64) if kind == "features" else (8, 32, 16, 16)).astype(np.float32)
    arrays = {"train": (inputs, rng.integers(0, 3, 8)), "val": (inputs, rng.integers(0, 3, 8))}
    trainer = build_trainer(cfg, kind, 3, "probe", arrays=None if kind == "images" else arrays)
    on_worker = Config.model_validate(trainer.train_loop_config["config"])
    assert getattr(on_worker.train, key) == CHANGED[key]  # the config travels whole
    assert on_worker == cfg
    if key in TRAINER:
        assert TRAINER[key](trainer) == CHANGED[key]
    if key in ("lr", "last_stage_lr_factor", "eps", "weight_decay"):
        optimizer = recipe.make_optimizer(torch.nn.Linear(2, 2) if kind == "features" else _last_stage_model(cfg, kind), cfg)
        groups = optimizer.param_groups
        assert groups[0]["lr"] == cfg.train.lr and groups[0]["eps"] == cfg.train.eps
        assert groups[0]["weight_decay"] == cfg.train.weight_decay
        if recipe.trains_last_stage(cfg, kind):
            assert groups[1]["lr"] == pytest.approx(cfg.train.lr * cfg.train.last_stage_lr_factor)
    if key == "last_stage_label_smoothing":
        assert recipe.label_smoothing(cfg, kind) == CHANGED[key]
    if key == "last_stage_feature_noise":
        assert recipe.feature_noise(cfg, kind) == CHANGED[key]
    if key == "precision":
        assert not recipe.mixed_precision(cfg, kind, torch.device("cuda"))


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_where_the_hardware_computes_it_and_it_pays(monkeypatch, native):
    """``auto``: CUDA always; a CPU only with native bfloat16 and only for the convolutional kinds (the small
    heads gain nothing, bench/train_precision.py); ``float32``: never."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": native, "avx512_bf16": False})
    auto, off = load_config(None, []), load_config(None, ["train.precision=float32"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for kind in recipe.KINDS:
        assert recipe.mixed_precision(auto, kind, cuda)
        assert recipe.mixed_precision(auto, kind, cpu) == (native and kind in ("activations", "images"))
        assert not recipe.mixed_precision(off, kind, cpu) and not recipe.mixed_precision(off, kind, cuda)


def _last_stage_model(cfg: Config, kind: str):
    return recipe.build_model(cfg, kind, 3)


def test_the_refusal_says_why_and_what_to_do():
    cfg = load_config(None, ["train.lr=0.01", "train.last_stage_feature_noise=0.3"])
    with pytest.raises(ConfigError) as info:
        recipe.check_train_keys(cfg, "features", searched=True)
    message = str(info.value)
    assert "train.lr=0.01 is chosen by the ASHA search" in message and "tune.lr" in message
    assert "train.last_stage_feature_noise=0.3 applies only to training on cached trunk activations" in message
    recipe.check_train_keys(cfg.model_copy(update={"train": TrainConfig(lr=0.01)}), "images")  # train: lr applies


def test_search_bounds_that_no_trial_could_use_and_warm_starts_are_refused_before_the_search():
    from asl_platform.training.search import check_bounds, run_search

    check_bounds(load_config(None, []))  # the defaults are fine
    with pytest.raises(ConfigError) as info:
        check_bounds(load_config(None, ["tune.lr=[0.001, 20]", "tune.dropout=[-0.1, 0.3]"]))
    assert "tune.lr: 20 can be sampled, but train.lr: Input should be less than or equal to 10" in str(info.value)
    assert "tune.dropout: -0.1 can be sampled, but model.dropout: Input should be greater than" in str(info.value)
    with pytest.raises(ConfigError, match="train.init_from applies only to asl-platform train"):
        run_search({"kind": "images"}, load_config(None, ["train.init_from=/models/old"]))


def test_tune_trials_get_the_whole_config_with_only_the_sampled_keys_as_domains():
    from ray.tune.search.sample import Domain

    cfg = load_config(None, ["train.early_stopping_patience=9", "train.last_stage_label_smoothing=0.2"])
    space = param_space(cfg)
    domains = {f"{section}.{key}" for section, values in space.items() for key, value in values.items()
               if isinstance(value, Domain)}
    assert domains == set(recipe.SEARCHED)
    assert space["train"]["early_stopping_patience"] == 9 and space["train"]["last_stage_label_smoothing"] == 0.2
    assert space["model"]["backbone"] == cfg.model.backbone and space["serve"] == cfg.serve.model_dump(mode="json")


def test_each_kind_builds_its_model_and_a_last_stage_gets_its_own_learning_rate(tmp_path):
    cfg = load_config(None, ["model.backbone=tiny", "model.weights=none", "model.hidden_size=8",
                             "train.lr=0.01", "train.last_stage_lr_factor=0.5"])
    head = recipe.build_model(cfg, "features", 3, feature_dim=64)
    assert isinstance(head, torch.nn.Sequential) and head[0].in_features == 64 and head[-1].out_features == 3
    assert len(recipe.make_optimizer(head, cfg).param_groups) == 1
    tail = recipe.build_model(cfg, "activations", 3)
    assert isinstance(tail, LastStageClassifier)
    groups = recipe.make_optimizer(tail, cfg).param_groups
    assert [len(g["params"]) for g in groups] == [4, 3] and [g["lr"] for g in groups] == [0.01, 0.005]
    frozen = recipe.build_model(cfg, "images", 3)
    assert isinstance(frozen, ASLClassifier) and len(recipe.make_optimizer(frozen, cfg).param_groups) == 1
    unfrozen = recipe.build_model(cfg.model_copy(update={"model": cfg.model.model_copy(update={"unfreeze_last_stage": True})}),
                                 "images", 3)
    assert [g["lr"] for g in recipe.make_optimizer(unfrozen, cfg).param_groups] == [0.01, 0.005]
