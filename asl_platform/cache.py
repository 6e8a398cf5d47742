"""What every derived-data cache (backbone features, hand landmarks) shares: a key that changes
whenever any listed file or setting does, and a folder that appears only once completely written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from asl_platform.data import ImageIndex


def listing_key(header: dict, index: ImageIndex) -> str:
    """Hash of ``header`` (the settings that change an output) and every file's path, label and
    size:mtime stamp from the listing."""
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True).encode())
    stamps = index.stamps or [""] * len(index.paths)
    for path, label, stamp in zip(index.paths, index.labels, stamps):
        digest.update(f"{path}\t{label}\t{stamp}\n".encode())
    return digest.hexdigest()[:20]


def write_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary folder, renamed into place only when it returns: a crash
    leaves no half-written cache that a later run would trust."""
    tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
