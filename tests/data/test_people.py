"""Whose photo is whose (asl_platform.data.people) and the listing's split where people are held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asl_platform.config import ConfigError, load_config
from asl_platform.data.listing import list_sources
from asl_platform.data.people import groups_of, leave_one_group_out, person_in_name, validates_on_people


def _tree(root: Path, names: dict[str, list[str]]) -> Path:
    for label, files in names.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in files:
            Image.new("RGB", (4, 4), (10, 20, 30)).save(root / label / name)
    return root


def test_the_person_comes_from_the_file_name_else_the_folder_is_one_group():
    paths = ["s/A/t32rahman-3.jpg", "s/B/lolzorus-12.png", "s/A/train-A0.jpg", "a/A/A1008.jpg", "s/C/t32rahman-4.jpg"]
    folders = ["s", "s", "s", "a", "s"]
    assert person_in_name("x/A/mariia00-3.jpg") == "mariia00" and person_in_name("x/A/A1008.jpg") is None
    assert groups_of(paths, folders) == ["t32rahman", "lolzorus", "s", "a", "t32rahman"]
    # A folder named like a person stays a group of its own.
    assert groups_of(["t32rahman/A/x.jpg", "s/A/t32rahman-1.jpg"], ["t32rahman", "s"]) == ["t32rahman/", "t32rahman"]
    # Another pattern: <person>_<n>.
    assert groups_of(["f/A/ann_1.jpg", "f/A/bo_2.jpg"], ["f", "f"], r"^(?P<person>[a-z]+)_\d+\.jpg$") == ["ann", "bo"]


def test_a_person_pattern_without_a_person_group_is_refused_with_the_key():
    with pytest.raises(ConfigError, match="data.person_pattern.*named group"):
        load_config(None, ["data.person_pattern=^(.+)-[0-9]+$"])
    with pytest.raises(ConfigError, match="data.person_pattern.*not a regular expression"):
        load_config(None, ["data.person_pattern=(?P<person>"])


def test_each_group_is_held_out_once_and_scored_only_on_letters_the_others_sign():
    groups = np.asarray(["alphabet"] * 4 + ["ann"] * 3 + ["bo"] * 2)
    labels = np.asarray([0, 1, 2, 3, 0, 1, 1, 0, 1])  # class 2 and 3: only the one signer signs them
    folds = leave_one_group_out(groups, labels)
    assert folds.names == ["alphabet", "ann", "bo"]
    assert folds.train[0].tolist() == [4, 5, 6, 7, 8] and folds.val[0].tolist() == [0, 1]  # 2, 3 not learnt
    assert folds.val[1].tolist() == [4, 5, 6] and folds.val[2].tolist() == [7, 8]
    assert sorted(np.concatenate(folds.val).tolist()) == [0, 1, 4, 5, 6, 7, 8]
    assert folds.held_out(9).tolist() == [0, 0, -1, -1, 1, 1, 1, 2, 2]
    # A group none of whose letters any other group signs has nothing to be scored on: no fold.
    assert leave_one_group_out(np.asarray(["a", "a", "b", "c"]), np.asarray([0, 1, 0, 5])).names == ["a", "b"]


def test_people_validation_needs_two_groups():
    assert validates_on_people("people", ["a", "b"]) and not validates_on_people("people", ["a", "a"])
    assert not validates_on_people("split", ["a", "b"])


def test_listing_holds_people_out_instead_of_a_validation_split(tmp_path):
    """Two folders, one of them naming its people: no validation split is drawn (every file is train or
    test, the test split as the random split would draw it) and every file knows its group; a folder
    of one signer alone has one group and keeps its validation split."""
    one = _tree(tmp_path / "alphabet", {c: [f"{c}{i}.png" for i in range(10)] for c in "AB"})
    many = _tree(tmp_path / "signers", {c: [f"{p}-{i}.png" for p in ("ann", "bo") for i in range(5)] for c in "AB"})
    index, sources = list_sources([str(one), str(many)], None, 42, 0.2, 0.2, validation="people")
    assert set(index.splits) == {"train", "test"} and sources[0]["split"] == {"train": 16, "val": 0, "test": 4}
    assert sorted(set(index.groups)) == ["alphabet", "ann", "bo"]
    assert all(g == "alphabet" for g, p in zip(index.groups, index.paths) if "/alphabet/" in p)
    split, _ = list_sources([str(one), str(many)], None, 42, 0.2, 0.2, validation="split")
    assert [s for s in split.splits if s == "test"] == [s for s in index.splits if s == "test"]
    assert [p for p, s in zip(split.paths, split.splits) if s == "test"] == \
        [p for p, s in zip(index.paths, index.splits) if s == "test"]  # the same test split either way
    alone, _ = list_sources([str(one)], None, 42, 0.2, 0.2, validation="people")
    assert set(alone.groups) == {"alphabet"} and "val" in alone.splits  # nobody to hold out: the split
