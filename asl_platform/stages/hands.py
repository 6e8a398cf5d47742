"""The hands stage: MediaPipe Hands over every listed image (``inference.find_hands``: a Ray Data
actor pool, one detector per actor), cached under the same key rules as backbone features.

Every image gets a row, hand or not: found, 21 landmarks (image pixels), handedness, score and box.
Unreadable files get an ``error`` as in the features stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from asl_platform.data.cache import FileCache
from asl_platform.data.listing import ImageIndex
from asl_platform.hands.detect import DETECT_MAX_SIDE, DetectionSettings, mediapipe_version
from asl_platform.hands.rows import HandTable
from asl_platform.inference import find_hands
from asl_platform.limits import MAX_IMAGE_BYTES

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3  # 3: rows per file (data.cache.FileCache)
COLUMNS = ("error", "found", "landmarks", "right", "score", "box")  # what is cached of a file


def cache_header(settings: DetectionSettings, max_bytes: int) -> dict:
    """What determines a file's hand besides the file: detection settings, MediaPipe, decode size, size limit."""
    return {"v": CACHE_FORMAT_VERSION, "settings": settings.to_dict(), "mediapipe": mediapipe_version(),
            "max_side": DETECT_MAX_SIDE, "max_bytes": max_bytes}


def detect_hands(
    index: ImageIndex, settings: DetectionSettings, cache_root: str | Path, batch_size: int = 64,
    concurrency: int | None = None, max_bytes: int = MAX_IMAGE_BYTES,
) -> HandTable:
    """A ``HandTable`` for every file of ``index`` (in index order): the cached rows of files unchanged
    since they were cached (``data.cache.FileCache``), MediaPipe run on the other files only."""
    if not len(index):
        return HandTable.from_columns({})
    cache = FileCache.under(cache_root, "hands", cache_header(settings, max_bytes))
    stamps = index.stamps or [""] * len(index)
    cached, missing = cache.lookup(index.paths, stamps)
    logger.info("hands: %d of %d image(s) cached in %s, %d to detect", int((~missing).sum()), len(index),
                cache.directory, int(missing.sum()))
    columns = {"path": np.asarray(index.paths, dtype=object), "label": np.asarray(index.labels, dtype=np.int64)}
    if missing.any():
        todo = index.without({p for p, m in zip(index.paths, missing) if not m})
        fresh = find_hands(todo, settings, batch_size, concurrency, max_bytes)[0].columns()
        fresh["error"] = fresh["error"].astype(object)
        keep = np.asarray([bool(s) for s, m in zip(stamps, missing) if m], dtype=bool)  # no stamp: not kept
        cache.add({"path": np.asarray(todo.paths, dtype=object)[keep],
                   "stamp": np.asarray([s for s, m in zip(stamps, missing) if m], dtype=object)[keep],
                   **{name: fresh[name][keep] for name in COLUMNS}})
    for name in COLUMNS:
        values = cached[name] if cached else None
        if values is None:
            values = np.zeros((len(index), *fresh[name].shape[1:]), dtype=fresh[name].dtype)
        if missing.any():
            values[missing] = fresh[name]
        columns[name] = values
    return HandTable.from_columns(columns, from_cache=not missing.any())
