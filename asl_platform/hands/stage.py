"""The hands stage: MediaPipe Hands over every listed image with a Ray Data actor pool (one
detector per actor), cached as Parquet under the same key rules as backbone features.

Every image gets a row, hand or not: found, 21 landmarks (image pixels and MediaPipe's world
metres), handedness, score and box. Unreadable files get an ``error`` as in the features stage.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asl_platform.cache import listing_key, write_atomically
from asl_platform.data import ImageIndex, _error_text, load_image
from asl_platform.hands.detect import DETECT_MAX_SIDE, NUM_LANDMARKS, DetectionSettings, HandDetector, mediapipe_version
from asl_platform.limits import MAX_IMAGE_BYTES

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_POINTS = NUM_LANDMARKS * 3


@dataclass
class HandTable:
    """One row per listed file, in ``ImageIndex`` order. Where no hand was found (or the file was
    unreadable) ``found`` is False and the landmark arrays are zeros."""

    paths: np.ndarray
    labels: np.ndarray
    errors: np.ndarray
    found: np.ndarray  # bool
    landmarks: np.ndarray  # (N, 21, 3) float32, pixels of the decoded image (JPEGs over 640 px decode reduced)
    world: np.ndarray  # (N, 21, 3) float32, metres
    right: np.ndarray  # (N,) float32: 1 for a hand MediaPipe labels "Right", else 0
    score: np.ndarray  # (N,) float32
    box: np.ndarray  # (N, 4) float32: x0, y0, x1, y1 pixels
    from_cache: bool = False

    @property
    def valid(self) -> np.ndarray:
        return self.errors == ""

    def inputs(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """What the landmark model reads: (N, 64) = 21 x (x, y, z) image landmarks + right-handedness."""
        return landmark_inputs(self.landmarks[rows], self.right[rows])

    def detection_rates(self, classes: list[str], rows: np.ndarray | None = None) -> dict[str, float]:
        """Share of readable images with a hand found, per class."""
        keep = self.valid if rows is None else rows & self.valid
        return {name: float(self.found[keep & (self.labels == i)].mean()) if np.any(keep & (self.labels == i))
                else float("nan") for i, name in enumerate(classes)}


def landmark_inputs(landmarks: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The landmark model's raw input row: flattened landmarks, then handedness (1 right, 0 left)."""
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, _POINTS)
    return np.concatenate([landmarks, np.asarray(right, dtype=np.float32).reshape(-1, 1)], axis=1)


class HandsActor:
    """Ray Data callable class: reads, decodes and detects; one MediaPipe graph per actor."""

    def __init__(self, settings: dict, max_bytes: int):
        self.detector = HandDetector(DetectionSettings.from_dict(settings))
        self.max_bytes = max_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["path"])
        out = {
            "path": np.asarray(batch["path"]).astype(str), "label": np.asarray(batch["label"]).astype(np.int64),
            "error": np.full(rows, "", dtype=object), "found": np.zeros(rows, bool),
            "landmarks": np.zeros((rows, _POINTS), np.float32), "world": np.zeros((rows, _POINTS), np.float32),
            "right": np.zeros(rows, np.float32), "score": np.zeros(rows, np.float32), "box": np.zeros((rows, 4), np.float32),
        }
        for i, path in enumerate(out["path"]):
            try:
                image = np.asarray(load_image(str(path), self.max_bytes, draft_size=DETECT_MAX_SIDE))
            except Exception as exc:  # as in decode_batch: one bad file is one error row
                out["error"][i] = _error_text(exc)
                continue
            hand = self.detector.detect(image)
            if hand is not None:
                out["found"][i] = True
                out["landmarks"][i] = hand.landmarks.reshape(-1)
                out["world"][i] = hand.world.reshape(-1)
                out["right"][i] = 1.0 if hand.handedness == "Right" else 0.0
                out["score"][i] = hand.score
                out["box"][i] = hand.box
        return out


def hands_cache_key(index: ImageIndex, settings: DetectionSettings, max_bytes: int) -> str:
    header = {"v": CACHE_FORMAT_VERSION, "stage": "hands", "settings": settings.to_dict(),
              "mediapipe": mediapipe_version(), "max_side": DETECT_MAX_SIDE, "max_bytes": max_bytes}
    return listing_key(header, index)


def _arrow(table: HandTable) -> pa.Table:
    def fixed(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np.float32)), width)

    return pa.table({
        "path": pa.array(table.paths.astype(str)), "label": pa.array(table.labels.astype(np.int32)),
        "error": pa.array(table.errors.astype(str)), "found": pa.array(table.found.astype(bool)),
        "landmarks": fixed(table.landmarks, _POINTS), "world": fixed(table.world, _POINTS),
        "right": pa.array(table.right.astype(np.float32)), "score": pa.array(table.score.astype(np.float32)),
        "box": fixed(table.box, 4),
    })


def _read(directory: Path) -> HandTable:
    arrow = pq.read_table(directory / "hands.parquet")

    def fixed(name: str, *shape: int) -> np.ndarray:
        return arrow.column(name).combine_chunks().flatten().to_numpy().reshape(-1, *shape).astype(np.float32)

    return HandTable(
        paths=np.asarray(arrow.column("path").to_pylist(), dtype=object),
        labels=arrow.column("label").to_numpy().astype(np.int64),
        errors=np.asarray(arrow.column("error").to_pylist(), dtype=object),
        found=arrow.column("found").to_numpy(zero_copy_only=False).astype(bool),
        landmarks=fixed("landmarks", NUM_LANDMARKS, 3), world=fixed("world", NUM_LANDMARKS, 3),
        right=arrow.column("right").to_numpy().astype(np.float32),
        score=arrow.column("score").to_numpy().astype(np.float32), box=fixed("box", 4), from_cache=True,
    )


def detect_hands(
    index: ImageIndex, settings: DetectionSettings, cache_root: str | Path | None, batch_size: int = 64,
    concurrency: int | None = None, max_bytes: int = MAX_IMAGE_BYTES,
) -> HandTable:
    """A ``HandTable`` for every file of ``index`` (in index order), from the cache when the key
    matches; ``cache_root`` None: not cached (evaluation, batch inference)."""
    key = hands_cache_key(index, settings, max_bytes)
    directory = Path(cache_root) / f"hands-{key}" if cache_root is not None else None
    if directory is not None and (directory / "meta.json").is_file():
        logger.info("hands cache hit: %s", directory)
        return _align(_read(directory), index)

    if not len(index):
        return _empty_table()
    import ray
    import ray.data

    blocks = max(1, -(-len(index) // (batch_size * 2)))  # small blocks: steady progress, little lost to a crash
    if concurrency is None:  # decoding and detection both run in the actor: one per CPU keeps every core busy
        concurrency = max(1, min(int(ray.cluster_resources().get("CPU", 1)), blocks))  # no idle actors
    logger.info("detecting hands in %d images (%d actor(s), MediaPipe %s, %s)%s", len(index), concurrency,
                mediapipe_version(), settings.to_dict(), f"; cache miss, will write {directory}" if directory else "")
    started = time.perf_counter()
    records = [{"path": p, "label": y} for p, y in zip(index.paths, index.labels)]
    dataset = ray.data.from_items(records, override_num_blocks=blocks).map_batches(
        HandsActor, fn_constructor_kwargs={"settings": settings.to_dict(), "max_bytes": max_bytes},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
    )
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            parts.setdefault(name, []).append(values)
    columns = {name: np.concatenate(values) for name, values in parts.items()} if parts else {}
    rows = len(columns.get("path", ()))
    table = HandTable(
        paths=columns.get("path", np.zeros(0)).astype(object), labels=columns.get("label", np.zeros(0)).astype(np.int64),
        errors=columns.get("error", np.zeros(0)).astype(object), found=columns.get("found", np.zeros(0)).astype(bool),
        landmarks=columns.get("landmarks", np.zeros((0, _POINTS))).reshape(rows, NUM_LANDMARKS, 3).astype(np.float32),
        world=columns.get("world", np.zeros((0, _POINTS))).reshape(rows, NUM_LANDMARKS, 3).astype(np.float32),
        right=columns.get("right", np.zeros(0)).astype(np.float32), score=columns.get("score", np.zeros(0)).astype(np.float32),
        box=columns.get("box", np.zeros((0, 4))).reshape(rows, 4).astype(np.float32),
    )
    seconds = time.perf_counter() - started
    readable = table.valid
    logger.info("hands found in %d of %d readable images (%.1f%%) in %.1fs (%.1f ms per image per actor)",
                int(table.found[readable].sum()), int(readable.sum()), 100 * table.found[readable].mean() if rows else 0,
                seconds, 1000 * seconds * concurrency / max(rows, 1))
    meta = {"key": key, "settings": settings.to_dict(), "mediapipe": mediapipe_version(), "root": index.root,
            "classes": index.classes, "num_images": len(index), "seconds": round(seconds, 2)}

    def write(tmp: Path) -> None:
        pq.write_table(_arrow(table), tmp / "hands.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    if directory is not None:
        write_atomically(directory, write)
    return _align(table, index)


def _empty_table() -> HandTable:
    return HandTable(np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, bool),
                     np.zeros((0, NUM_LANDMARKS, 3), np.float32), np.zeros((0, NUM_LANDMARKS, 3), np.float32),
                     np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32))


def _align(table: HandTable, index: ImageIndex) -> HandTable:
    """Reorder rows to the index order (Ray Data does not promise order)."""
    position = {path: i for i, path in enumerate(table.paths)}
    order = np.asarray([position[path] for path in index.paths], dtype=np.int64)
    return HandTable(table.paths[order], table.labels[order], table.errors[order], table.found[order],
                     table.landmarks[order], table.world[order], table.right[order], table.score[order],
                     table.box[order], table.from_cache)
