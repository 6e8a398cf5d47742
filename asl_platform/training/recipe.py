"""What is trained for each kind of input, with which optimizer, and which ``train.*`` keys apply.

Kinds: ``features`` (the head on cached backbone features), ``activations`` (the backbone's last stage
+ head on cached trunk activations, ``model.unfreeze_last_stage`` in the pipeline), ``images``
(the whole classifier on image files, ``asl-platform train`` and full-image Tune trials) and
``landmarks`` (the landmark model on cached hand landmarks, ``model.kind=hand_aware``).

A ``train.*`` key set (to anything but its default) where it has no effect is refused before any
work starts, so that no setting silently does nothing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from asl_platform.config import Config, ConfigError, TrainConfig
from asl_platform.hands.features import LandmarkAugment
from asl_platform.model import (
    build_classifier,
    build_head,
    build_last_stage_classifier,
    get_backbone_spec,
    load_model_dir,
)
from asl_platform.model.landmarks import LandmarkClassifier

Kind = Literal["features", "activations", "images", "landmarks"]
KINDS: tuple[Kind, ...] = ("features", "activations", "images", "landmarks")
ARRAY_KINDS = ("features", "activations", "landmarks")  # trained on cached arrays, not image files
# What each kind trains, in log lines (the pipeline retrains two models in a row: their epoch lines differ).
TRAINS = {"features": "head", "activations": "last stage + head", "images": "classifier", "landmarks": "landmark model"}
# The keys an ASHA search samples, as dotted config paths, with how each is sampled from its bounds
# ``tune.<key>`` (same name): they reach every trial (and the retrain that follows the search) from
# the search, never from the config file.
SEARCHED = {"train.lr": "loguniform", "train.eps": "loguniform", "train.weight_decay": "loguniform",
            "train.batch_size": "choice", "model.hidden_size": "choice", "model.dropout": "uniform"}


def trains_last_stage(cfg: Config, kind: Kind) -> bool:
    return kind == "activations" or (kind == "images" and cfg.model.unfreeze_last_stage)


def _inapplicable(cfg: Config, kind: Kind, searched: bool) -> dict[str, str]:
    """train.* key -> why it has no effect for this kind of training."""
    last_stage = trains_last_stage(cfg, kind)
    why = {
        "last_stage_lr_factor": None if last_stage else "applies only where the backbone's last stage is trained "
                                "(model.unfreeze_last_stage)",
        "last_stage_label_smoothing": None if last_stage else "applies only where the backbone's last stage is "
                                      "trained (model.unfreeze_last_stage)",
        "last_stage_feature_noise": None if kind == "activations" else "applies only to training on cached trunk "
                                    "activations (asl-platform pipeline with model.unfreeze_last_stage)",
        "augment": None if kind == "images" else "applies only to training on images (asl-platform train); cached "
                   "features cannot be augmented (with model.unfreeze_last_stage, train.last_stage_feature_noise is)",
        "init_from": None if kind == "images" else "applies only to asl-platform train (a warm start of the whole "
                     "classifier); the pipeline trains a fresh head",
    }
    if searched:
        for dotted in SEARCHED:
            section, key = dotted.split(".")
            if section == "train":
                why[key] = (f"is chosen by the ASHA search in this command (tune.{key}); to fix it, give the search "
                            f"one value (e.g. --set tune.{key}=" + ("[64]" if key == "batch_size" else "[x,x]")
                            + "), or train with asl-platform train")
    return {key: reason for key, reason in why.items() if reason}


def check_train_keys(cfg: Config, kind: Kind, searched: bool = False) -> None:
    """Refuse every ``train.*`` key set to a non-default value that would have no effect here.

    ``searched``: the command runs an ASHA search first (``pipeline``), which picks the sampled keys."""
    defaults = TrainConfig()
    problems = [
        f"  train.{key}={getattr(cfg.train, key)!r} {reason}"
        for key, reason in _inapplicable(cfg, kind, searched).items()
        if getattr(cfg.train, key) != getattr(defaults, key)
    ]
    if problems:
        raise ConfigError("settings that would have no effect here:\n" + "\n".join(problems))


def build_model(cfg: Config, kind: Kind, num_classes: int, feature_dim: int | None = None) -> nn.Module:
    """The freshly initialised module that ``kind`` trains (``torch.manual_seed`` first for repeatability).

    ``images`` starts from ``model.weights`` and then the warm start ``train.init_from``, if any."""
    model_cfg = cfg.model
    if kind == "landmarks":
        hands = cfg.hands
        augment = LandmarkAugment(hands.augment_roll_deg, hands.augment_tilt_deg, hands.augment_stretch,
                                  hands.augment_jitter)
        return LandmarkClassifier(num_classes, model_cfg.hidden_size, model_cfg.dropout, augment)
    if kind == "features":
        return build_head(feature_dim or get_backbone_spec(model_cfg.backbone).feature_dim, num_classes,
                          model_cfg.hidden_size, model_cfg.dropout)
    if kind == "activations":  # channels-last: the faster convolution layout on CPUs (sources.ArrayBatches matches it)
        return build_last_stage_classifier(model_cfg.backbone, model_cfg.weights, num_classes, model_cfg.hidden_size,
                                           model_cfg.dropout).to(memory_format=torch.channels_last)
    model = build_classifier(model_cfg.backbone, model_cfg.weights, num_classes, model_cfg.hidden_size,
                             model_cfg.dropout, model_cfg.unfreeze_last_stage)
    if cfg.train.init_from:
        model.load_state_dict(load_model_dir(cfg.train.init_from)[0].state_dict())
    return model


def build_members(cfg: Config, kind: Kind, num_classes: int, feature_dim: int | None, count: int,
                  seed: int) -> nn.ModuleList:
    """``count`` models of ``kind`` from the same initial weights (``seed``), trained in lockstep where the
    run chooses on held-out people (``loop.fit``): the model of everyone and one per held-out group are the
    same recipe on other rows."""
    members = []
    for _ in range(count):
        torch.manual_seed(seed)
        members.append(build_model(cfg, kind, num_classes, feature_dim))
    return nn.ModuleList(members)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; a trained last stage of a
    pretrained backbone gets its own group at ``train.lr x train.last_stage_lr_factor``. For the members
    of a people-validated run (an ``nn.ModuleList``) one AdamW serves them all: its state is per parameter,
    and a step leaves the members without gradients (not trained on that batch) untouched."""
    train = cfg.train
    modules = list(model) if isinstance(model, nn.ModuleList) else [model]
    last_stage = [p for module in modules for p in getattr(module, "last_stage_parameters", list)()]
    in_last_stage = {id(p) for p in last_stage}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_last_stage]
    groups = [{"params": rest, "lr": train.lr}]
    if last_stage:
        groups.append({"params": last_stage, "lr": train.lr * train.last_stage_lr_factor})
    return torch.optim.AdamW(groups, lr=train.lr, eps=train.eps, weight_decay=train.weight_decay)


CONVOLUTIONAL_KINDS = ("activations", "images")  # where bfloat16 pays on a CPU; the small heads gain nothing


def native_bf16_cpu() -> bool:
    """A CPU that computes bfloat16 matrix products in hardware (AMX or AVX-512 BF16), not emulated."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def mixed_precision(cfg: Config, kind: Kind, device: torch.device) -> bool:
    """Train ``kind`` under bfloat16 autocast on ``device`` (``train.precision``): on CUDA, and on a
    native-bf16 CPU for the convolutional kinds (the last stage on activations: 2x the images/s in
    bench/train_precision.py); the weights, checkpoints and exported models stay float32."""
    if cfg.train.precision == "float32":
        return False
    return device.type == "cuda" or (device.type == "cpu" and kind in CONVOLUTIONAL_KINDS and native_bf16_cpu())


def label_smoothing(cfg: Config, kind: Kind) -> float:
    if kind == "landmarks":
        return cfg.hands.label_smoothing
    return cfg.train.last_stage_label_smoothing if trains_last_stage(cfg, kind) else 0.0


def landmark_config(cfg: Config) -> Config:
    """The config the landmark model's search and retrain run with: its own length and patience
    (``hands.epochs``, ``hands.early_stopping_patience``) in place of the image model's."""
    hands = cfg.hands
    return cfg.model_copy(update={
        "tune": cfg.tune.model_copy(update={"max_epochs": hands.epochs,
                                            "grace_period": min(cfg.tune.grace_period, hands.epochs)}),
        "train": cfg.train.model_copy(update={"epochs": hands.epochs,
                                              "early_stopping_patience": hands.early_stopping_patience}),
    })


def feature_noise(cfg: Config, kind: Kind) -> float:
    return cfg.train.last_stage_feature_noise if kind == "activations" else 0.0
