"""Finding the images and splitting them: class folders (or Kaggle's wrappers, or a flat folder with
the class in the file name) listed up front into an ``ImageIndex``, because a deterministic stratified
split needs the whole list."""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow.fs as pafs

from asl_platform.config import PERSON_PATTERN
from asl_platform.data.people import groups_of, validates_on_people
from asl_platform.data.storage import is_hidden, list_children, split_uri, strip_file_scheme, to_uri
from asl_platform.errors import DataError

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}



SPLITS = ("train", "val", "test")



@dataclass
class ImageIndex:
    """Every image file found, with its class, in a stable class order."""

    root: str
    layout: str
    classes: list[str]
    paths: list[str]
    labels: list[int]
    stamps: list[str] = field(default_factory=list)  # "size:mtime_ns" from the listing (cache keys)
    splits: list[str] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)  # which training folder each file is from (several folders)
    groups: list[str] = field(default_factory=list)  # whose each file is: a person, or its folder (``data.people``)

    @classmethod
    def of_paths(cls, paths: list[str]) -> ImageIndex:
        """Files to run a model over, without classes (labels -1)."""
        return cls(root="", layout="paths", classes=[], paths=list(paths), labels=[-1] * len(paths))

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, split: str) -> ImageIndex:
        """Only the images of one split (train/val/test), same classes."""
        return self._take([i for i, s in enumerate(self.splits) if s == split])

    def without(self, paths: Iterable[str]) -> ImageIndex:
        """The same index less some files (e.g. the unreadable ones), splits kept."""
        drop = set(paths)
        return self._take([i for i, p in enumerate(self.paths) if p not in drop])

    def _take(self, keep: list[int]) -> ImageIndex:
        def pick(values: list) -> list:
            return [values[i] for i in keep] if values else []

        return ImageIndex(self.root, self.layout, self.classes, pick(self.paths), pick(self.labels),
                          pick(self.stamps), pick(self.splits), pick(self.sources), pick(self.groups))

    def records(self) -> list[dict]:
        splits = self.splits or ["train"] * len(self.paths)
        return [
            {"path": p, "label": y, "split": s}
            for p, y, s in zip(self.paths, self.labels, splits)
        ]



def _is_image_name(name: str) -> bool:
    return any(name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)



def _find_class_root(fs: pafs.FileSystem, path: str) -> tuple[str, str]:
    """Descend through the Kaggle download wrappers to the folder that holds the classes.

    Handles ``asl_alphabet_train/asl_alphabet_train/<CLASS>/`` and a download root holding both
    ``asl_alphabet_train`` and ``asl_alphabet_test`` (the train folder is used).
    """
    layout = "class folders"
    for _ in range(4):
        children = list_children(fs, path)
        dirs = [c for c in children if c.type == pafs.FileType.Directory]
        images = [c for c in children if c.type == pafs.FileType.File and _is_image_name(c.base_name)]
        if images and not dirs:
            return path, "flat folder (class from file name)"
        train_dirs = [d for d in dirs if d.base_name.lower().endswith("_train")]
        if len(dirs) == 1 and not images and _is_wrapper(fs, path, dirs[0]):
            path, layout = dirs[0].path, "nested folder"
        elif train_dirs and len(dirs) <= 3:
            path, layout = train_dirs[0].path, f"Kaggle download ({train_dirs[0].base_name})"
        else:
            return path, layout
    return path, layout



def _is_wrapper(fs: pafs.FileSystem, parent: str, child: pafs.FileInfo) -> bool:
    """A lone subfolder is a wrapper (descend) rather than a lone class folder when it holds folders,
    or is Kaggle's doubled ``x/x`` or ``*_train``/``*_test`` folder."""
    name = child.base_name.lower()
    return (
        any(c.type == pafs.FileType.Directory for c in list_children(fs, child.path))
        or name == Path(parent).name.lower()
        or name.endswith(("_train", "_test"))
    )



_FLAT_LABEL = re.compile(r"^(?P<label>[A-Za-z]+)")



def _flat_label(file_name: str) -> str | None:
    """``A_test.jpg`` -> ``A``, ``nothing_test.jpg`` -> ``nothing``, ``B12.jpg`` -> ``B``."""
    match = _FLAT_LABEL.match(file_name.rsplit(".", 1)[0])
    return match.group("label") if match else None



def list_images(root: str, max_per_class: int | None = None, seed: int = 42) -> ImageIndex:
    """List ``<root>/<CLASS>/*`` (or a Kaggle/flat layout) into an ImageIndex.

    Every non-hidden file inside a class folder is kept, images or not, so that a non-image file is
    reported by the decoder rather than silently dropped.
    """
    root = strip_file_scheme(root)
    fs, base = split_uri(root.rstrip("/"))
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data root not found: {root}")
    if info.type != pafs.FileType.Directory:
        raise DataError(f"data root is not a folder: {root}")

    class_root, layout = _find_class_root(fs, base)
    by_class: dict[str, list[pafs.FileInfo]] = {}
    if layout.startswith("flat"):
        for child in list_children(fs, class_root):
            if child.type == pafs.FileType.File and _is_image_name(child.base_name):
                label = _flat_label(child.base_name)
                if label is not None:
                    by_class.setdefault(label, []).append(child)
    else:
        for child in list_children(fs, class_root):
            if child.type != pafs.FileType.Directory:
                continue
            files = fs.get_file_info(pafs.FileSelector(child.path, recursive=True))
            by_class[child.base_name] = sorted(
                (f for f in files if f.type == pafs.FileType.File and not is_hidden(f.path, child.path)),
                key=lambda f: f.path,
            )
        empty = [name for name, files in by_class.items() if not files]
        if empty:
            raise DataError(
                f"class folder(s) with no images under {to_uri(root, class_root)}: {', '.join(empty)}. "
                "Add images or remove the folder(s)."
            )
    if len(by_class) < 2:
        raise DataError(
            f"found {len(by_class)} class(es) under {root} (layout: {layout}); need at least 2. "
            "Expected <root>/<CLASS>/<image> folders, e.g. <root>/A/a1.jpg, <root>/B/b1.jpg."
        )

    classes = sorted(by_class)
    paths, labels, stamps = [], [], []
    for label, name in enumerate(classes):
        files = by_class[name]
        if max_per_class is not None and len(files) > max_per_class:
            files = sorted(random.Random(f"{seed}:cap:{name}").sample(files, max_per_class), key=lambda f: f.path)
        paths.extend(to_uri(root, f.path) for f in files)
        labels.extend([label] * len(files))
        stamps.extend(f"{f.size}:{f.mtime_ns}" for f in files)
    logger.info("found %d files in %d classes under %s (%s)", len(paths), len(classes), root, layout)
    return ImageIndex(root=root, layout=layout, classes=classes, paths=paths, labels=labels, stamps=stamps)



def scan_files(root: str, exclude: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """Every non-hidden regular file under a folder or prefix, recursively: path -> (size, mtime_ns).

    Unlike ``list_images`` nothing is filtered by name or layout: batch inference attempts every file,
    so a stray README becomes a "not an image" row instead of vanishing. Sizes and times let a watcher
    wait until a file has stopped changing. Paths come back as ``read_bytes`` reads them (a local
    path, or the URI with its scheme), sorted; anything at or under an ``exclude`` path is left out
    (an output folder inside the input).
    """
    root = strip_file_scheme(root)
    fs, base = split_uri(root.rstrip("/") or root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"input not found: {root}")
    if info.type != pafs.FileType.Directory:
        raise DataError(f"input is not a folder or prefix: {root}")
    skip = [to_uri(path, split_uri(path)[1]).rstrip("/") for path in map(str, exclude)]
    found: dict[str, tuple[int, int]] = {}
    for entry in sorted(fs.get_file_info(pafs.FileSelector(base, recursive=True)), key=lambda f: f.path):
        if entry.type != pafs.FileType.File or is_hidden(entry.path, base):
            continue
        path = to_uri(root, entry.path)
        if any(path == s or path.startswith(s + "/") for s in skip):
            continue
        found[path] = (int(entry.size or 0), int(entry.mtime_ns or 0))
    return found



def stratified_split(index: ImageIndex, val_fraction: float, test_fraction: float, seed: int) -> ImageIndex:
    """Assign train/val/test per class with a seeded shuffle, so the same seed gives the same split.

    The shuffle of each class depends only on that class's own files and the seed, so adding a new
    class does not move the images of the others.
    """
    splits = [""] * len(index.paths)
    for label, name in enumerate(index.classes):
        members = sorted((i for i, y in enumerate(index.labels) if y == label), key=index.paths.__getitem__)
        random.Random(f"{seed}:{name}").shuffle(members)
        n = len(members)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n_test + n_val >= n:  # keep at least one training image per class
            n_test, n_val = min(n_test, max(n - 1, 0)), max(min(n_val, n - 1 - n_test), 0)
        for position, i in enumerate(members):
            splits[i] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    index.splits = splits
    return index



def merge_sources(indexes: list[ImageIndex]) -> ImageIndex:
    """Several listed and split folders as one index: classes matched by name (the union, sorted as
    ``list_images`` sorts them), each file keeping the split its own folder gave it."""
    if len(indexes) == 1:
        return indexes[0]
    classes = sorted({name for index in indexes for name in index.classes})
    position = {name: i for i, name in enumerate(classes)}
    merged = ImageIndex(root=", ".join(index.root for index in indexes),
                        layout="+".join(index.layout for index in indexes), classes=classes, paths=[], labels=[])
    for number, index in enumerate(indexes):
        merged.sources += [number] * len(index.paths)
        merged.paths += index.paths
        merged.labels += [position[index.classes[y]] for y in index.labels]
        merged.stamps += index.stamps or [""] * len(index.paths)
        merged.splits += index.splits
        merged.groups += index.groups
    seen: set[str] = set()
    twice = [path for path in merged.paths if path in seen or seen.add(path)]
    if twice:  # nested or repeated folders: one photo would count twice, maybe in two splits
        raise DataError(f"{len(twice)} file(s) are under more than one of the data folders, e.g. {twice[0]}; "
                        "list folders that do not overlap")
    return merged



def list_sources(roots: list[str], max_per_class: int | None, seed: int, val_fraction: float,
                 test_fraction: float, validation: str = "split",
                 person_pattern: str = PERSON_PATTERN) -> tuple[ImageIndex, list[dict]]:
    """List and split every folder (stratified per folder and class, so each source is in every
    split in proportion), merged into one index with each file's group (``data.people.groups_of``); and per
    folder its image and split counts. ``validation="people"`` with two groups or more: no validation split
    is drawn (each group is held out in turn instead, ``data.people``), the rest of train/test as ever."""
    indexes = [list_images(root, max_per_class, seed) for root in roots]
    groups = groups_of([p for index in indexes for p in index.paths],
                       [index.root for index in indexes for _ in index.paths], person_pattern)
    if validates_on_people(validation, groups):
        val_fraction = 0.0
    start = 0
    for index in indexes:
        index.groups, start = groups[start:start + len(index)], start + len(index)
        stratified_split(index, val_fraction, test_fraction, seed)
    sources = [{"root": index.root, "images": len(index),
                "split": {s: index.splits.count(s) for s in ("train", "val", "test")}} for index in indexes]
    return merge_sources(indexes), sources


def join_classes(index: ImageIndex, classes: list[str]) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """``index``'s files of ``classes`` (a model's, joined by name) with their labels in that order,
    and how many files of each class ``classes`` does not have (left out, for the caller to report)."""
    position = {name: i for i, name in enumerate(classes)}
    keep = [(p, position[index.classes[y]]) for p, y in zip(index.paths, index.labels) if index.classes[y] in position]
    unknown = {c: n for c, n in index.class_counts().items() if c not in position and n > 0}
    return [p for p, _ in keep], np.asarray([y for _, y in keep], dtype=np.int64), unknown
