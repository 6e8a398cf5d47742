"""What every derived-data cache (backbone features, hand landmarks) shares: rows kept per file, valid
while the file's size and modification time and the stage's settings are unchanged (``FileCache``), in
Parquet parts that appear only once completely written."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class FileCache:
    """One stage's per-file rows under one key of settings: a folder of Parquet parts, a row per file with
    its path and ``size:mtime`` stamp. A run takes the rows whose path and stamp match its listing and
    computes only the other files, which it adds as a new part: adding photos to a folder costs only the
    new photos, and a cross-domain folder's rows are shared by every run that lists it."""

    def __init__(self, directory: Path, header: dict):
        self.directory = Path(directory)
        self.header = header

    @classmethod
    def under(cls, root: str | Path, stage: str, header: dict) -> FileCache:
        """The cache of ``stage`` for ``header`` (what changes a row: settings, library versions) in ``root``."""
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:20]
        return cls(Path(root) / f"{stage}-{digest}", header)

    def lookup(self, paths: list[str], stamps: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The cached columns of the files given (rows in their order, those of misses undefined) and
        which files missed. A file without a stamp always misses: nothing tells whether it changed."""
        hit = np.zeros(len(paths), dtype=bool)
        if not (self.directory / "meta.json").is_file() or not any(self.directory.glob("part-*.parquet")):
            return {}, ~hit
        shapes = json.loads((self.directory / "meta.json").read_text())["shapes"]
        table = pq.read_table(sorted(str(p) for p in self.directory.glob("part-*.parquet")))
        row_of = {f"{p}\t{s}": i for i, (p, s) in enumerate(zip(table.column("path").to_pylist(),
                                                                table.column("stamp").to_pylist()))}
        rows = np.zeros(len(paths), dtype=np.int64)
        for i, (path, stamp) in enumerate(zip(paths, stamps)):
            found = row_of.get(f"{path}\t{stamp}") if stamp else None
            if found is not None:
                hit[i], rows[i] = True, found
        columns = _columns(table.take(pa.array(rows[hit])), shapes)
        out = {}
        for name, values in columns.items():  # back to one row per file given, misses left as zeros
            full = np.zeros((len(paths), *values.shape[1:]), dtype=values.dtype)
            full[hit] = values
            out[name] = full
        return out, ~hit

    def add(self, columns: dict[str, np.ndarray]) -> None:
        """Add rows (columns with ``path`` and ``stamp``) as a new part, written to a hidden name and renamed."""
        if not len(columns.get("path", ())):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        shapes = {name: list(values.shape[1:]) for name, values in columns.items() if values.ndim > 1}
        meta = self.directory / "meta.json"
        if not meta.is_file():
            tmp = self.directory / f".meta-{os.getpid()}.json"
            tmp.write_text(json.dumps({"header": self.header, "shapes": shapes}, indent=2))
            tmp.rename(meta)
        tmp = self.directory / f".part-{os.getpid()}-{time.time_ns()}.parquet"
        pq.write_table(_arrow(columns, shapes), tmp)
        tmp.rename(self.directory / tmp.name[1:])


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
