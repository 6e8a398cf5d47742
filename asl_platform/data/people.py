"""Whose photo is whose, and the folds that hold each person out.

A model that is to work for people it has never seen has to be *chosen* on people it was not trained on:
when training stops, which trial of a search wins, the fusion rule, the "not sure" threshold. A random
validation split of the training folders is mostly the one signer the model trains on, so what is best
there is not what carries over. Here every training file gets a **group**: the person its file name names
(``data.person_pattern``, e.g. ``t32rahman-3.jpg``), else its folder as a whole (a folder of one signer, or
of several people not named per file). Each fold holds one group out (leave-one-group-out): the models of a
fold are trained on the other groups and scored on it, and every group weighs the same in the score (the
mean over people, as the cross-domain sets are reported). The model exported is trained on every group.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asl_platform.config import PERSON_PATTERN


def person_in_name(path: str, pattern: str = PERSON_PATTERN) -> str | None:
    """The person a file's name names (``mariia00-3.jpg`` -> ``mariia00``), or None. ``pattern`` has a
    ``(?P<person>...)`` group (``data.person_pattern``, checked by the config)."""
    match = re.match(pattern, Path(path).name)
    return match.group("person") if match else None


def groups_of(paths: list[str], folders: list[str], pattern: str = PERSON_PATTERN) -> list[str]:
    """Each file's group: the person its name names, else its folder (``folders[i]`` is file i's training
    folder) as one group, named after the folder. A person's files in two folders are one group."""
    named = [person_in_name(path, pattern) for path in paths]
    people = {person for person in named if person is not None}
    names = {folder: folder_group_name(folder, people) for folder in set(folders)}
    return [person if person is not None else names[folder] for person, folder in zip(named, folders)]


def folder_group_name(folder: str, people: set[str]) -> str:
    """A folder's group is named after it (``asl-alphabet``), with ``/`` added should a person have that name."""
    name = Path(str(folder).rstrip("/")).name or str(folder)
    return name + "/" if name in people else name


def validates_on_people(validation: str, groups: list[str] | np.ndarray) -> bool:
    """``data.validation=people`` holds groups out where there are two or more; with one there is nobody to
    hold out, and the validation split is what is chosen on (the log and the model card say so)."""
    return validation == "people" and len(set(list(groups))) >= 2


@dataclass
class Folds:
    """Leave-one-group-out over the rows of one training array: fold ``k`` trains on ``train[k]`` (row
    indices: every other group's rows) and is scored on ``val[k]`` (group ``names[k]``'s rows of the classes
    its training rows have: a letter only one group signs cannot be learnt without it)."""

    names: list[str]
    train: list[np.ndarray]
    val: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    def held_out(self, rows: int) -> np.ndarray:
        """Which fold scores each row (-1: none, e.g. a class its group alone has)."""
        fold = np.full(rows, -1, dtype=np.int64)
        for number, val in enumerate(self.val):
            fold[val] = number
        return fold


def leave_one_group_out(groups: np.ndarray, labels: np.ndarray) -> Folds:
    """One fold per group of ``groups`` (one entry per row), in name order; a group with nothing to score
    (none of its classes in the other groups' rows) has no fold."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    folds = Folds([], [], [])
    for name in sorted(set(groups.tolist())):
        mine = groups == name
        scored = np.flatnonzero(mine & np.isin(labels, np.unique(labels[~mine])))
        if len(scored):
            folds.names.append(name)
            folds.train.append(np.flatnonzero(~mine))
            folds.val.append(scored)
    return folds


def group_counts(groups: list[str] | np.ndarray) -> dict[str, int]:
    """Images per group, largest first (what the log and the model card show)."""
    return dict(Counter(list(groups)).most_common())
