"""What the pipeline exports is chosen on people the models were not trained on: a fixture where the
validation split of the same people and the held-out people disagree, through the real retrain (Ray Train,
the models of each fold in lockstep), the evaluate stage's answers and the export's choice."""

from __future__ import annotations

import numpy as np
import pytest

from asl_platform.config import load_config
from asl_platform.data.listing import ImageIndex
from asl_platform.hands.rows import HandTable
from asl_platform.model.fusion import choose_rule
from asl_platform.stages.evaluate import evaluate_held_out
from asl_platform.stages.export import validation_card
from asl_platform.stages.features import FeatureTable
from asl_platform.stages.ingest import PreparedData
from asl_platform.stages.retrain import retrain
from helpers.datasets import hand_shapes

pytestmark = pytest.mark.e2e
CLASSES = ["A", "B", "C"]


def signer_and_people(people: bool) -> PreparedData:
    """One signer (many photos) whose backgrounds give the letter away to the image model and whose hands
    the detector reads badly, and three people whose backgrounds mislead it (each shows the next letter's)
    and whose hands read well: on the signer's own validation images the image model is right, on people
    it has never seen it is wrong, and the landmark model is the one that carries over."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 16)).astype(np.float32)
    paths, labels, groups, features, rows = [], [], [], [], []
    for name, count, jitter, shift in (("signer", 90, 100.0, 0), ("ann", 20, 2.0, 1), ("bo", 20, 2.0, 1), ("cy", 20, 2.0, 1)):
        hands, letters = hand_shapes(count, seed=len(paths), jitter=jitter)
        for i, (row, letter) in enumerate(zip(hands, letters)):
            paths.append(f"/data/{'alphabet' if name == 'signer' else 'people'}/{CLASSES[letter]}/{name}-{i}.jpg")
            labels.append(int(letter))
            groups.append(name)
            features.append(centres[(letter + shift) % 3] + rng.normal(0, 0.5, 16).astype(np.float32))
            rows.append(row)
    n = len(paths)
    position = rng.permutation(n)
    splits = np.where(position % 10 == 0, "test", np.where((position % 10 < 4) & (not people), "val", "train"))
    index = ImageIndex("/data", "class folders", CLASSES, paths, labels, [""] * n, splits.tolist(),
                       [0 if g == "signer" else 1 for g in groups], groups)
    rows = np.stack(rows)
    table = FeatureTable(np.asarray(paths, object), np.asarray(labels), np.stack(features), np.full(n, "", object))
    hands = HandTable(np.asarray(paths, object), np.asarray(labels), np.full(n, "", object), np.ones(n, bool),
                      rows[:, :63].reshape(n, 21, 3), rows[:, 63], np.ones(n, np.float32), np.zeros((n, 4), np.float32))
    folders = [{"root": "/data/alphabet", "images": 270}, {"root": "/data/people", "images": 180}]
    return PreparedData("/data", index, {s: int((splits == s).sum()) for s in ("train", "val", "test")}, table=table,
                        hands=hands, people=people, sources=folders, balance_sources=True)


def test_the_rule_exported_is_the_best_on_held_out_people_where_the_validation_split_would_choose_another(
        ray_local, tmp_path):
    cfg = load_config(None, ["model.kind=hand_aware", "model.hidden_size=32", "model.dropout=0.0", "train.lr=0.01",
                             "train.batch_size=32", "train.epochs=8", "hands.epochs=8", "hands.augment_tilt_deg=0",
                             "hands.augment_roll_deg=0", f"run.storage_path={tmp_path / 'ray'}"])
    chosen = {}
    for people in (False, True):
        prepared = signer_and_people(people)
        retrained = retrain(cfg, cfg, prepared, "features")
        if people:  # the folds' models, each trained without its group, came back with the exported ones
            assert retrained.landmarks.folds.names == ["ann", "bo", "cy", "signer"]
            assert len(retrained.landmarks.held_out) == 4 and len(retrained.image.held_out) == 4
        _, answers = evaluate_held_out(retrained, prepared, "features")
        scores = answers["val"].scores(CLASSES)
        chosen[people] = choose_rule(scores), scores
        if people:
            card = validation_card(cfg, prepared, answers["val"], chosen[people][0])
            assert card.mode == "people" and set(card.per_group) == {"ann", "bo", "cy", "signer"}
            assert card.groups == {"signer": 90 * 3, "ann": 60, "bo": 60, "cy": 60}
            assert card.accuracy == pytest.approx(np.mean(list(card.per_group.values())))
    (split_rule, split_scores), (people_rule, people_scores) = chosen[False], chosen[True]
    assert people_rule == max(people_scores, key=people_scores.get) == "landmarks|image", people_scores
    assert split_rule != people_rule and split_scores[split_rule] > split_scores["landmarks|image"], split_scores
    assert people_scores["image"] < 0.5 < split_scores["image"]  # the image model: right on the signer only
