"""Reading image files with Ray Data: decode and preprocess in ``map_batches``. A file that cannot be
decoded becomes a row with an ``error`` message instead of crashing the job, so every bad file can be
counted and reported by path."""

from __future__ import annotations

import math
import random
from typing import Iterable

import numpy as np
from PIL import Image

from asl_platform.data.decode import Preprocessing, augmentation, decode_image, error_text, preprocess_images
from asl_platform.data.listing import ImageIndex
from asl_platform.data.storage import read_bytes
from asl_platform.limits import MAX_IMAGE_BYTES


def load_image(path: str, max_bytes: int = MAX_IMAGE_BYTES, draft_size: int | None = None) -> Image.Image:
    """Read and decode one file (local or URI); raises ValueError/OSError for unusable files."""
    return decode_image(read_bytes(path, max_bytes), draft_size=draft_size)



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
            errors.append(error_text(exc))
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
            errors.append(error_text(exc))
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


def map_with_actors(dataset, actor: type, constructor_kwargs: dict, batch_size: int, concurrency: int,
                    num_gpus: float = 0) -> dict[str, np.ndarray]:
    """Run ``actor`` (a Ray Data callable class: one model per actor, loaded once) over ``dataset``
    with a pool of ``concurrency`` actors, and gather every column it returns. Rows come back in any
    order: callers put them back in their own by path."""
    import ray.data

    mapped = dataset.map_batches(actor, fn_constructor_kwargs=constructor_kwargs, batch_size=batch_size,
                                 batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
                                 num_gpus=num_gpus)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def in_path_order(columns: dict[str, np.ndarray], paths: list[str]) -> dict[str, np.ndarray]:
    """``map_with_actors``'s columns as rows of ``paths`` (a path listed twice gets its row twice);
    a path that came back without a row is an error, never a silent misalignment."""
    position = {str(path): i for i, path in enumerate(columns.get("path", ()))}
    missing = [p for p in paths if p not in position]
    if missing:
        raise RuntimeError(f"{len(missing)} path(s) came back from Ray Data without an answer, e.g. {missing[:3]}")
    order = np.asarray([position[p] for p in paths], dtype=np.int64)
    return {name: values[order] for name, values in columns.items()}
