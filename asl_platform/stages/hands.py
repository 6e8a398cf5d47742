"""The hands stage: MediaPipe Hands over every listed image (``inference.find_hands``: a Ray Data
actor pool, one detector per actor), cached under the same key rules as backbone features.

Every image gets a row, hand or not: found, 21 landmarks (image pixels), handedness, score and box.
Unreadable files get an ``error`` as in the features stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from asl_platform.data.cache import listing_key, load_columns, save_columns
from asl_platform.data.listing import ImageIndex
from asl_platform.hands.detect import DETECT_MAX_SIDE, DetectionSettings, mediapipe_version
from asl_platform.hands.rows import HandTable
from asl_platform.inference import find_hands
from asl_platform.limits import MAX_IMAGE_BYTES

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: one table.parquet (data.cache), no world landmarks


def hands_cache_key(index: ImageIndex, settings: DetectionSettings, max_bytes: int) -> str:
    header = {"v": CACHE_FORMAT_VERSION, "stage": "hands", "settings": settings.to_dict(),
              "mediapipe": mediapipe_version(), "max_side": DETECT_MAX_SIDE, "max_bytes": max_bytes}
    return listing_key(header, index)


def detect_hands(
    index: ImageIndex, settings: DetectionSettings, cache_root: str | Path, batch_size: int = 64,
    concurrency: int | None = None, max_bytes: int = MAX_IMAGE_BYTES,
) -> HandTable:
    """A ``HandTable`` for every file of ``index`` (in index order), from the cache when the key matches."""
    key = hands_cache_key(index, settings, max_bytes)
    directory = Path(cache_root) / f"hands-{key}"
    cached = load_columns(directory)
    if cached is not None:
        logger.info("hands cache hit: %s", directory)
        return HandTable.from_columns(cached, from_cache=True).in_order(index.paths)
    logger.info("hands cache miss, will write %s", directory)
    table, seconds = find_hands(index, settings, batch_size, concurrency, max_bytes)
    meta = {"key": key, "settings": settings.to_dict(), "mediapipe": mediapipe_version(), "root": index.root,
            "classes": index.classes, "num_images": len(index), "seconds": round(seconds, 2)}
    save_columns(directory, table.columns(), meta)
    return table
