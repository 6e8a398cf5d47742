"""Image-folder ingest with Ray Data: find the files, split them, decode and preprocess in batches.

Files are listed up front (pyarrow filesystems, so local paths and ``s3://`` work alike) because a
deterministic stratified split needs the whole list. Decoding happens in ``map_batches``; a file that
cannot be decoded becomes a row with an ``error`` message instead of crashing the job, so every bad
file can be counted and reported by path.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps, UnidentifiedImageError

from asl_platform.errors import DataError
from asl_platform.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
__all__ = ["DataError"]  # re-exported: data errors are raised and caught under this module's name too


class ImageTooLargeError(ValueError):
    """An image whose pixel count is over the limit, or a decompression bomb: refused before decoding."""


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its input: square resize, then per-channel normalisation."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(int(values["image_size"]), tuple(values["mean"]), tuple(values["std"]))


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
                          pick(self.stamps), pick(self.splits), pick(self.sources))

    def records(self) -> list[dict]:
        splits = self.splits or ["train"] * len(self.paths)
        return [
            {"path": p, "label": y, "split": s}
            for p, y, s in zip(self.paths, self.labels, splits)
        ]


# --------------------------------------------------------------------------- listing


OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")  # pyarrow paths there are "bucket/key"


@functools.lru_cache(maxsize=16)
def _remote_filesystem(scheme_and_host: str) -> pafs.FileSystem:
    """One pyarrow filesystem per ``scheme://host`` per process (creating one can be slow)."""
    return pafs.FileSystem.from_uri(scheme_and_host + "/")[0]


def strip_file_scheme(path: str | Path) -> str:
    """``file:///a/b`` -> ``/a/b``; local paths and remote URIs unchanged."""
    text = str(path)
    return urlparse(text).path if text.startswith("file://") else text


def is_remote(path: str | Path) -> bool:
    """True for ``s3://``, ``gs://`` and other non-local URIs (not for ``file://``)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def storage_uri(path: str) -> str:
    """Ray storage wants an absolute local path or a URI (s3://... for shared storage on a cluster)."""
    return path if is_remote(path) else str(Path(strip_file_scheme(path)).resolve())


def split_uri(path: str) -> tuple[pafs.FileSystem, str]:
    """``s3://bucket/key`` -> (S3 filesystem, ``bucket/key``); a local path -> (local fs, absolute path).

    Credentials and region come from the environment (e.g. AWS_REGION, AWS_ENDPOINT_URL), as for
    the AWS CLI; options in a ``?query`` are refused rather than silently dropped.
    """
    if "://" not in path:
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    parsed = urlparse(path)
    if parsed.query:
        raise DataError(
            f"{path}: options in the URI (?{parsed.query}) are not supported; "
            "set them in the environment instead (AWS_REGION, AWS_ENDPOINT_URL, ...)"
        )
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), parsed.path
    fs = _remote_filesystem(f"{parsed.scheme}://{parsed.netloc}")
    if parsed.scheme in OBJECT_STORE_SCHEMES:
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    return fs, parsed.path.rstrip("/") or "/"


def _to_uri(root: str, fs_path: str) -> str:
    """Turn a filesystem path back into what the user would type (keep the scheme and host)."""
    if "://" not in root:
        return fs_path
    parsed = urlparse(root)
    if parsed.scheme == "file":
        return fs_path
    if parsed.scheme in OBJECT_STORE_SCHEMES:
        return f"{parsed.scheme}://{fs_path}"
    return f"{parsed.scheme}://{parsed.netloc}{fs_path}"


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(
        (info for info in infos if not info.base_name.startswith(".")), key=lambda i: i.base_name
    )


def _is_hidden(path: str, below: str) -> bool:
    """A file in or under a hidden folder (``.ipynb_checkpoints/``, ``.git/``) or itself hidden."""
    return any(part.startswith(".") for part in path[len(below):].split("/") if part)


def _is_image_name(name: str) -> bool:
    return any(name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)


def _find_class_root(fs: pafs.FileSystem, path: str) -> tuple[str, str]:
    """Descend through the Kaggle download wrappers to the folder that holds the classes.

    Handles ``asl_alphabet_train/asl_alphabet_train/<CLASS>/`` and a download root holding both
    ``asl_alphabet_train`` and ``asl_alphabet_test`` (the train folder is used).
    """
    layout = "class folders"
    for _ in range(4):
        children = _children(fs, path)
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
        any(c.type == pafs.FileType.Directory for c in _children(fs, child.path))
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
        for child in _children(fs, class_root):
            if child.type == pafs.FileType.File and _is_image_name(child.base_name):
                label = _flat_label(child.base_name)
                if label is not None:
                    by_class.setdefault(label, []).append(child)
    else:
        for child in _children(fs, class_root):
            if child.type != pafs.FileType.Directory:
                continue
            files = fs.get_file_info(pafs.FileSelector(child.path, recursive=True))
            by_class[child.base_name] = sorted(
                (f for f in files if f.type == pafs.FileType.File and not _is_hidden(f.path, child.path)),
                key=lambda f: f.path,
            )
        empty = [name for name, files in by_class.items() if not files]
        if empty:
            raise DataError(
                f"class folder(s) with no images under {_to_uri(root, class_root)}: {', '.join(empty)}. "
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
        paths.extend(_to_uri(root, f.path) for f in files)
        labels.extend([label] * len(files))
        stamps.extend(f"{f.size}:{f.mtime_ns}" for f in files)
    logger.info("found %d files in %d classes under %s (%s)", len(paths), len(classes), root, layout)
    return ImageIndex(root=root, layout=layout, classes=classes, paths=paths, labels=labels, stamps=stamps)


def scan_files(root: str, exclude: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """Every non-hidden regular file under a folder or prefix, recursively: path -> (size, mtime_ns).

    Unlike ``list_images`` nothing is filtered by name or layout: batch inference attempts every file,
    so a stray README becomes a "not an image" row instead of vanishing. Sizes and times let a watcher
    wait until a file has stopped changing. Paths come back as ``_read_bytes`` reads them (a local
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
    skip = [_to_uri(path, split_uri(path)[1]).rstrip("/") for path in map(str, exclude)]
    found: dict[str, tuple[int, int]] = {}
    for entry in sorted(fs.get_file_info(pafs.FileSelector(base, recursive=True)), key=lambda f: f.path):
        if entry.type != pafs.FileType.File or _is_hidden(entry.path, base):
            continue
        path = _to_uri(root, entry.path)
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
    seen: set[str] = set()
    twice = [path for path in merged.paths if path in seen or seen.add(path)]
    if twice:  # nested or repeated folders: one photo would count twice, maybe in two splits
        raise DataError(f"{len(twice)} file(s) are under more than one of the data folders, e.g. {twice[0]}; "
                        "list folders that do not overlap")
    return merged


def list_sources(roots: list[str], max_per_class: int | None, seed: int, val_fraction: float,
                 test_fraction: float) -> tuple[ImageIndex, list[dict]]:
    """List and split every folder (stratified per folder and class, so each source is in every
    split in proportion), merged into one index; and per folder its image and split counts."""
    indexes = [stratified_split(list_images(root, max_per_class, seed), val_fraction, test_fraction, seed)
               for root in roots]
    sources = [{"root": index.root, "images": len(index),
                "split": {s: index.splits.count(s) for s in ("train", "val", "test")}} for index in indexes]
    return merge_sources(indexes), sources


# --------------------------------------------------------------------------- decoding


def _read_bytes(path: str, max_bytes: int) -> bytes:
    if "://" not in path:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    else:
        fs, fs_path = split_uri(path)
        with fs.open_input_file(fs_path) as handle:
            data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than the {max_bytes}-byte limit")
    return data


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode bytes to an upright RGB image; raise ValueError with a short reason for anything unusable.

    ``draft_size`` lets JPEG decode at a reduced scale when the image is much larger than needed.
    """
    if not data:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"image too large ({width}x{height} pixels, limit {max_pixels})")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos: apply the orientation tag
        except UnidentifiedImageError:
            raise ValueError("not an image (unrecognised format)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageTooLargeError(f"refused as a decompression bomb: {exc}") from None
        except (OSError, SyntaxError) as exc:  # truncated or corrupt data
            raise ValueError(f"corrupt or truncated image: {exc}") from None
    return to_rgb(image)


def oriented_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image as ``decode_image`` shows it (EXIF rotation applied),
    from its header only; a decode at reduced (draft) scale is smaller than this."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    orientation = image.getexif().get(0x0112, 1)  # 5-8: rotated a quarter turn
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (CMYK, 16-bit, palette, alpha) to 8-bit RGB; alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: full range 0..65535 -> 0..255
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((array / 257.0).round().clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


# The ImageNet mean colour: what a small rotation reveals at the corners (no black wedges).
_FILL = (124, 116, 104)


@functools.lru_cache(maxsize=8)
def augmentation(image_size: int) -> Callable[[Image.Image], Image.Image]:
    """Training augmentation that keeps a letter a letter (torchvision.transforms.v2): a random
    resized crop that keeps most of the hand in view, a small rotation and colour jitter. No flips:
    a mirrored hand can read as another letter or as the other hand's sign. Randomness comes from
    torch's generator, so each epoch (and each Ray Data task) draws new variants."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.75, 1.0), ratio=(0.85, 1.18), antialias=True),
        v2.RandomRotation(10, interpolation=InterpolationMode.BILINEAR, fill=_FILL),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
    ])


def load_image(path: str, max_bytes: int = MAX_IMAGE_BYTES, draft_size: int | None = None) -> Image.Image:
    """Read and decode one file (local or URI); raises ValueError/OSError for unusable files."""
    return decode_image(_read_bytes(path, max_bytes), draft_size=draft_size)


def resize_for_model(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB image -> uint8 HWC array at the backbone's input size (what serving sends to the model:
    4x smaller than floats)."""
    size = (prep.image_size, prep.image_size)
    return np.asarray(image if image.size == size else image.resize(size, Image.BILINEAR))


def normalize_batch(batch: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 NHWC batch -> normalised float32 NCHW, as the backbone expects.

    One copy to float32 NCHW, then torchvision.transforms.v2's ``normalize`` in place, with the mean
    and std in pixel units (x 255): the [0, 1] scaling folds into it, one pass fewer over the batch."""
    import torch
    from torchvision.transforms.v2 import functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    tensor = tensor.to(torch.float32, memory_format=torch.contiguous_format)
    return F.normalize(tensor, [255.0 * m for m in prep.mean], [255.0 * s for s in prep.std], inplace=True).numpy()


def preprocess_images(images: Iterable[Image.Image], prep: Preprocessing) -> np.ndarray:
    """RGB images -> normalised float32 NCHW batch."""
    arrays = [resize_for_model(image, prep) for image in images]
    if not arrays:
        return np.zeros((0, 3, prep.image_size, prep.image_size), dtype=np.float32)
    return normalize_batch(np.stack(arrays), prep)


def _error_text(exc: Exception) -> str:
    """Our own ValueErrors already read well; anything else (a PIL plugin, I/O) keeps its type name."""
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def decode_batch(
    batch: dict[str, np.ndarray], prep: Preprocessing, max_bytes: int, augment: bool = False
) -> dict[str, np.ndarray]:
    """Ray Data UDF: read + decode (+ augment) + preprocess; failures become rows with an ``error``.

    Augmentation draws fresh randomness on every pass, so each epoch sees new variants.
    """
    paths = batch["path"]
    transform = augmentation(prep.image_size) if augment else None
    images, errors = [], []
    for path in paths:
        try:
            image = load_image(str(path), max_bytes, draft_size=prep.image_size)
            images.append(transform(image) if transform else image)
            errors.append("")
        except Exception as exc:  # any failure on one file (PIL plugins raise many types) skips that file only
            images.append(Image.new("RGB", (prep.image_size, prep.image_size)))
            errors.append(_error_text(exc))
    out = dict(batch)
    out["image"] = preprocess_images(images, prep)
    out["error"] = np.asarray(errors, dtype=object)
    return out


def _num_blocks(rows: int, batch_size: int) -> int:
    """Blocks of ~8 batches: fewer, longer tasks keep the cores busy (bench/ingest.py: 0.92x of a
    DataLoader vs 0.68x with one block per batch, on 2 CPUs); but at least 2 blocks per CPU of the
    cluster so that every core gets work."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    by_size = math.ceil(rows / (8 * batch_size))
    return max(1, min(max(by_size, 2 * cpus), math.ceil(rows / batch_size)))


def image_dataset(
    index: ImageIndex,
    prep: Preprocessing,
    batch_size: int = 64,
    max_bytes: int = MAX_IMAGE_BYTES,
    augment: bool = False,
    shuffle_seed: int | None = None,
):
    """A streaming Ray Dataset of preprocessed images with columns path, label, split, image, error.

    Files are listed class by class, so training data must be shuffled (``shuffle_seed``): the rows
    are shuffled once with the seed, and the block order is randomised again on every epoch.
    """
    import ray.data

    records = index.records()
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(records)
    dataset = ray.data.from_items(records, override_num_blocks=_num_blocks(len(records), batch_size))
    if shuffle_seed is not None:
        dataset = dataset.randomize_block_order()
    return dataset.map_batches(
        decode_batch,
        fn_kwargs={"prep": prep, "max_bytes": max_bytes, "augment": augment},
        batch_size=batch_size,
        batch_format="numpy",
    )


def check_batch(batch: dict[str, np.ndarray], max_bytes: int, draft_size: int | None) -> dict[str, np.ndarray]:
    """Ray Data UDF: read and decode each file exactly as ``decode_batch`` does, keep only the error."""
    errors = []
    for path in batch["path"]:
        try:
            load_image(str(path), max_bytes, draft_size=draft_size)
            errors.append("")
        except Exception as exc:  # as in decode_batch: one bad file is one error row, never a crash
            errors.append(_error_text(exc))
    return {"path": np.asarray(batch["path"]).astype(str), "error": np.asarray(errors, dtype=object)}


def find_unreadable(
    paths: list[str], max_bytes: int = MAX_IMAGE_BYTES, draft_size: int | None = None, batch_size: int = 64
) -> dict[str, str]:
    """Path -> error for every file that does not decode, in ``paths`` order; one Ray Data pass.

    Training streams images to its workers, which can only drop a bad row, not name it to the
    driver; decoding each file once up front (no preprocessing, so cheaper than an epoch's decode)
    lets ``train`` list them by path before any worker starts, like the features stage does.
    """
    import ray.data

    if not paths:
        return {}
    records = [{"path": str(p)} for p in paths]
    dataset = ray.data.from_items(records, override_num_blocks=_num_blocks(len(records), batch_size)).map_batches(
        check_batch, fn_kwargs={"max_bytes": max_bytes, "draft_size": draft_size},
        batch_size=batch_size, batch_format="numpy",
    )
    found: dict[str, str] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        found.update((str(p), str(e)) for p, e in zip(batch["path"], batch["error"]) if e)
    return {str(p): found[str(p)] for p in paths if str(p) in found}


def summarize_errors(paths: Iterable[str], errors: Iterable[str], limit: int = 10) -> str:
    """A short human-readable report of skipped files, for the log."""
    bad = [(p, e) for p, e in zip(paths, errors) if e]
    if not bad:
        return "no unreadable files"
    lines = [f"skipped {len(bad)} unreadable file(s):"]
    lines += [f"  {p}: {e}" for p, e in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (see skipped_files.csv)")
    return "\n".join(lines)
