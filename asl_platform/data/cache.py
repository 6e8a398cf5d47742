"""What every derived-data cache (backbone features, hand landmarks) shares: a key that changes
whenever any listed file or setting does, a folder that appears only once completely written, and
one Parquet table of per-file columns."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asl_platform.data.listing import ImageIndex


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


def save_columns(directory: Path, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write a table of per-file columns as ``table.parquet`` + ``meta.json``, atomically. A column
    of more than one dimension is stored one flat list per row, its row shape recorded in the meta."""
    shapes = {name: list(values.shape[1:]) for name, values in columns.items() if values.ndim > 1}

    def write(tmp: Path) -> None:
        pq.write_table(_arrow(columns, shapes), tmp / "table.parquet")
        (tmp / "meta.json").write_text(json.dumps({**meta, "shapes": shapes}, indent=2))

    write_atomically(directory, write)


def load_columns(directory: Path) -> dict[str, np.ndarray] | None:
    """The columns ``save_columns`` wrote (strings as object arrays), or None when not cached."""
    if not (directory / "meta.json").is_file():
        return None
    shapes = json.loads((directory / "meta.json").read_text())["shapes"]
    return _columns(pq.read_table(directory / "table.parquet"), shapes)


def _arrow(columns: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> pa.Table:
    arrays = {}
    for name, values in columns.items():
        if name in shapes:
            width = int(np.prod(shapes[name]))
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), width)
        else:
            arrays[name] = pa.array(values.astype(str) if values.dtype == object else values)
    return pa.table(arrays)


def _columns(table: pa.Table, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name in shapes:
            columns[name] = column.flatten().to_numpy().reshape(-1, *shapes[name])
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns[name] = np.asarray(column.to_pylist(), dtype=object)
        else:
            columns[name] = column.to_numpy(zero_copy_only=False)
    return columns
