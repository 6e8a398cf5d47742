"""The landmark model (model.kind hand_aware) through real Ray Tune (ASHA) and real Ray Train,
by the one training loop, on landmark rows of three hand shapes seen from varied viewpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asl_platform.config import ConfigError, load_config
from asl_platform.model.landmarks import LandmarkClassifier
from asl_platform.training import recipe
from asl_platform.training.search import run_search
from asl_platform.training.trainer import run_training
from helpers.datasets import hand_shapes

pytestmark = pytest.mark.e2e


def test_the_landmark_model_is_searched_by_asha_and_retrained_by_ray_train(ray_local, tmp_path):
    train, val = hand_shapes(40, seed=0), hand_shapes(15, seed=1)
    cfg = load_config(None, ["model.kind=hand_aware", "tune.num_samples=3", "tune.max_epochs=6", "tune.grace_period=2",
                             "tune.lr=[0.003,0.03]", "train.epochs=12", f"run.storage_path={tmp_path / 'ray'}",
                             "hands.augment_roll_deg=5"])
    best, rows, _ = run_search({"kind": "landmarks", "train": train, "val": val, "num_classes": 3}, cfg, "tune-landmarks")
    assert len(rows) == 3 and best.hands.augment_roll_deg == 5  # the whole config travels to every trial
    assert "error" not in rows[0] and max(r["best_val_accuracy"] for r in rows) > 0.6

    trained = run_training(best, "landmarks", 3, "retrain-landmarks", arrays={"train": train, "val": val})
    assert isinstance(trained.model, LandmarkClassifier)
    assert trained.best_metrics["val_accuracy"] >= 0.9, trained.history[-1]
    assert trained.model.features.augment.roll == pytest.approx(np.deg2rad(5))
    with torch.inference_mode():  # the returned model is the best epoch's, in eval mode: deterministic
        x = torch.from_numpy(val[0])
        assert torch.equal(trained.model(x), trained.model(x))
        accuracy = (trained.model(x).argmax(1).numpy() == val[1]).mean()
    assert accuracy == pytest.approx(trained.best_metrics["val_accuracy"])


def test_hands_keys_are_refused_unless_the_model_is_hand_aware():
    with pytest.raises(ConfigError, match="hands.augment_tilt_deg.*model.kind=hand_aware"):
        load_config(None, ["hands.augment_tilt_deg=10"])
    with pytest.raises(ConfigError, match="hands.paddings"):
        load_config(None, ["model.kind=hand_aware", "hands.paddings=[2.0]"])
    cfg = load_config(None, ["model.kind=hand_aware", "hands.paddings=[0.3]", "hands.min_confidence=0.4"])
    model = recipe.build_model(cfg, "landmarks", 5)
    assert isinstance(model, LandmarkClassifier) and model.head[-1].out_features == 5


def test_commands_that_cannot_build_a_hand_aware_model_say_so_before_any_work(tmp_path):
    from asl_platform.pipeline import run_pipeline, run_train, run_tune

    cfg = load_config(None, ["model.kind=hand_aware", f"run.output_dir={tmp_path}"])
    for command in (run_train, run_tune):
        with pytest.raises(ConfigError, match="asl-platform pipeline builds hand-aware models"):
            command(cfg)
    with pytest.raises(ConfigError, match="tune.mode=features"):
        run_pipeline(load_config(None, ["model.kind=hand_aware", "tune.mode=images", f"run.output_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())  # nothing was started or written
