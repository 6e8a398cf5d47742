"""Batch inference: classify every file under a folder or ``s3://`` prefix into Parquet and CSV, once.

An S3-upload trigger done the Ray way: instead of one function call per upload
event, a Ray Data actor pool (``inference.predict_paths_with_hands``) classifies whole listings, and ``watch``
polls for files that arrived since. The output folder is the only state: the paths in its part
files are what has been classified, so a re-run or a restarted watcher never classifies a file
twice and no database or queue is needed. Unreadable files become rows with their error, so nothing
is dropped silently.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from asl_platform.config import InferenceConfig
from asl_platform.data.listing import scan_files
from asl_platform.data.storage import is_remote, strip_file_scheme
from asl_platform.errors import DataError
from asl_platform.inference import DEFAULT_MAX_BYTES, predict_paths_with_hands
from asl_platform.model import ModelCard, model_location, resolve_model_dir

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
# A file not modified for this long (or for one --interval, if longer) is taken at first sight; a
# newer one once two polls agree on it.
DEFAULT_SETTLE_S = 10.0
DEFAULT_BATCH_SIZE = 64
# A long run writes a part every this many files, so a crash or Ctrl-C loses at most one part's work.
MAX_FILES_PER_PART = 10_000
COMBINED_CSV = "predictions.csv"
# Present while rows are being appended to the CSV: if a crash leaves it, the CSV is rebuilt.
APPENDING_MARKER = ".predictions.csv.appending"
PART_NAME = re.compile(r"^predictions-\d{8}T\d{6}Z-(?P<number>\d+)\.parquet$")
SUMMARY_ERRORS = 10
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("letter", pa.string()),  # null when the file could not be read
    ("probability", pa.float32()),  # of ``letter``; null when the file could not be read
    ("top3", pa.string()),  # "A:0.91 S:0.05 E:0.02"; null when the file could not be read
    ("error", pa.string()),  # "" when fine
    ("model_version", pa.string()),
    ("classified_at", pa.timestamp("ms", tz="UTC")),
    ("hand_found", pa.bool_()),  # hand-aware models: MediaPipe found a hand; null for image models and unreadable files
])


@dataclass
class BatchResult:
    """What one run (or a whole watch) did, for the log and the command's summary."""

    output: str
    classified: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    parts: list[str] = field(default_factory=list)
    already_done: int = 0  # files skipped because an earlier run classified them
    polls: int = 0

    def add(self, other: BatchResult) -> None:
        self.classified += other.classified
        self.unreadable += other.unreadable
        self.parts += other.parts
        if not self.polls:  # as the first poll found it: what earlier runs had classified
            self.already_done = other.already_done
        self.polls += other.polls


# --------------------------------------------------------------------------- output folder


def _local_output(output: str | Path) -> Path:
    """Part files are published by rename, which is atomic only on a local filesystem."""
    if is_remote(output):
        raise DataError(f"--output must be a local folder (got {output}); the input may be s3:// or gs://")
    path = Path(strip_file_scheme(output)).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DataError(f"output is not a folder: {path}")
    return path


class PredictionStore:
    """The output folder: one Parquet part per batch of files (published atomically), and a
    combined ``predictions.csv`` of every part for people to open.

    The CSV grows by appending each new part's rows, so a long watch costs the same per poll
    however much it has classified; it is rebuilt from the parts only when a crash may have left
    it behind them or half-appended."""

    def __init__(self, output: str | Path):
        self.root = _local_output(output)

    def parts(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if PART_NAME.match(p.name))

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows of all parts, oldest part first."""
        tables = []
        for part in self.parts():
            try:
                tables.append(pq.read_table(part, columns=columns))
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"cannot read the part file {part} ({exc}); move it out of {self.root} "
                                "(its files will then be classified again)") from exc
        if not tables:
            schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables, promote_options="default")  # parts written before hand_found: null there

    def write_part(self, table: pa.Table) -> Path:
        """Write under a hidden temporary name, then rename: a reader (or a restarted watcher) sees
        a whole part or none, never half of one."""
        self.root.mkdir(parents=True, exist_ok=True)
        numbers = [int(PART_NAME.match(p.name)["number"]) for p in self.parts()]
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        final = self.root / f"predictions-{stamp}-{max(numbers, default=0) + 1:05d}.parquet"
        temporary = self.root / f".{final.name}.{os.getpid()}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, final)
        return final

    def csv_is_stale(self) -> bool:
        """True after a crash between publishing a part and adding its rows to the CSV, or during
        an append (the marker is left)."""
        csv_path, parts = self.root / COMBINED_CSV, self.parts()
        if not parts:
            return False
        if (self.root / APPENDING_MARKER).exists() or not csv_path.is_file():
            return True
        return csv_path.stat().st_mtime_ns < max(p.stat().st_mtime_ns for p in parts)

    def write_csv(self) -> Path:
        """Rewrite ``predictions.csv`` from every part (atomically): the recovery path."""
        path = self.root / COMBINED_CSV
        temporary = self.root / f".{COMBINED_CSV}.{os.getpid()}.tmp"
        pa_csv.write_csv(self.read(), temporary)
        os.replace(temporary, path)
        (self.root / APPENDING_MARKER).unlink(missing_ok=True)
        return path

    def append_csv(self, table: pa.Table) -> Path:
        """Add the rows of a just-published part to ``predictions.csv``. Needs a CSV that held
        every earlier part, so call it right after ``write_part`` on a store that was not stale."""
        path, marker = self.root / COMBINED_CSV, self.root / APPENDING_MARKER
        if not path.is_file() or marker.exists() or _csv_header(path) != table.column_names:
            return self.write_csv()  # missing, an earlier append failed half-way, or older columns
        marker.touch()
        with path.open("ab") as handle:
            pa_csv.write_csv(table, handle, write_options=pa_csv.WriteOptions(include_header=False))
            handle.flush()
            os.fsync(handle.fileno())
        marker.unlink()
        return path


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])


# --------------------------------------------------------------------------- classification


def _model_identity(model_dir: str | Path) -> tuple[str, list[str], str]:
    """Resolve the model once up front (a wrong --model fails before Ray starts): where the actors
    load it from (see ``model_location``), its classes, and its name as ``<models folder>/<version>``,
    e.g. ``default/v3``, for the ``model_version`` column."""
    location = model_location(model_dir)
    directory = resolve_model_dir(location)
    card = ModelCard.load(directory)
    return location, list(card.classes), f"{directory.parent.name}/{card.version or directory.name}"


def prediction_table(
    paths: list[str], probabilities: np.ndarray, errors: list[str], classes: list[str], model_version: str,
    hand_found: np.ndarray | None = None,
) -> pa.Table:
    """Rows of the output: the top letter, its probability and the top three, or the error; and
    whether a hand was found (hand-aware models)."""
    letters, best, top3 = [], [], []
    for probs, error in zip(probabilities, errors):
        if error:
            letters.append(None)
            best.append(None)
            top3.append(None)
            continue
        order = np.argsort(-probs, kind="stable")[:3]
        letters.append(classes[order[0]])
        best.append(float(probs[order[0]]))
        top3.append(" ".join(f"{classes[i]}:{probs[i]:.2f}" for i in order))
    now = datetime.now(timezone.utc)
    return pa.table({
        "path": paths, "letter": letters, "probability": best, "top3": top3, "error": list(errors),
        "model_version": [model_version] * len(paths), "classified_at": [now] * len(paths),
        "hand_found": [None if hand_found is None or error else bool(found)
                       for found, error in zip(hand_found if hand_found is not None else errors, errors)],
    }, schema=SCHEMA)


class BatchJob:
    """Classifies the files under ``input`` that the output folder does not hold yet.

    ``poll`` is one listing plus classification; ``watch`` and ``predict_batch`` call it. State
    between polls is only the previous listing (to tell a finished file from one still growing).
    """

    def __init__(self, model_dir: str | Path, input: str, output: str | Path,
                 batch_size: int = DEFAULT_BATCH_SIZE, use_gpu: bool = False,
                 max_files_per_part: int = MAX_FILES_PER_PART, inference: InferenceConfig | None = None):
        self.model_dir, self.classes, self.model_version = _model_identity(model_dir)
        self.inference = inference or InferenceConfig()
        self.input = str(input)
        self.store = PredictionStore(output)
        self.batch_size, self.use_gpu, self.max_files_per_part = batch_size, use_gpu, max_files_per_part
        self._check_folders()
        earlier = self.store.read(["path", "model_version"])
        self.done: set[str] = set(earlier.column("path").to_pylist())
        versions = set(earlier.column("model_version").to_pylist()) - {self.model_version}
        if versions:
            logger.warning("%s already holds predictions of model(s) %s; only new files will be classified, "
                           "with %s (use a new --output to classify everything again)",
                           self.store.root, ", ".join(sorted(versions)), self.model_version)
        if self.done:
            logger.info("%d file(s) already classified in %s are skipped", len(self.done), self.store.root)
        if self.store.csv_is_stale():
            logger.warning("%s is behind the part files (an earlier run stopped while writing it); rebuilding it",
                           self.store.root / COMBINED_CSV)
            self.store.write_csv()
        self._previous: dict[str, tuple[int, int]] = {}
        self.stop_requested = False

    def _check_folders(self) -> None:
        """An output folder inside the input is skipped by the listing; the input itself (or a
        folder holding it) cannot be, so it is refused."""
        if is_remote(self.input):
            return
        source, target = Path(strip_file_scheme(self.input)).expanduser().resolve(), self.store.root
        if source == target or source.is_relative_to(target):
            raise DataError(f"the output folder {target} must not be the input {source} or hold it; "
                            "choose another --output")

    def poll(self, wait_until_stable: bool, settle_s: float = DEFAULT_SETTLE_S) -> BatchResult:
        """List the input once and classify what is new. With ``wait_until_stable`` a file is taken
        once it has not been modified for ``settle_s`` seconds, or once two consecutive polls saw the
        same size and modification time, so a file still being uploaded is not classified
        half-written, and files already there when a watch starts are taken by its first poll."""
        listing = scan_files(self.input, exclude=[str(self.store.root)])
        new = {path: stamp for path, stamp in listing.items() if path not in self.done}
        if wait_until_stable:
            settled_before = time.time_ns() - int(settle_s * 1e9)  # by this machine's clock
            ready = [path for path, stamp in new.items()  # an mtime of 0 is unknown: never settled by age
                     if self._previous.get(path) == stamp or 0 < stamp[1] <= settled_before]
            self._previous = new
        else:
            ready = list(new)
        waiting = len(new) - len(ready)
        result = BatchResult(str(self.store.root), already_done=len(listing) - len(new), polls=1)
        (logger.info if new else logger.debug)(
            "%s: %d file(s), %d already classified, %d to classify now, %d new or still changing (taken once unchanged)",
            self.input, len(listing), result.already_done, len(ready), waiting)
        for start in range(0, len(ready), self.max_files_per_part):
            if self.stop_requested:
                logger.warning("stopping: %d file(s) left for the next run", len(ready) - start)
                break
            result.add(self._classify(ready[start:start + self.max_files_per_part]))
        return result

    def _classify(self, paths: list[str]) -> BatchResult:
        """One part: Ray Data inference, a new Parquet part, the combined CSV rewritten."""
        started = time.perf_counter()
        probabilities, errors, found, _ = predict_paths_with_hands(self.model_dir, paths, batch_size=self.batch_size,
                                                                   max_bytes=DEFAULT_MAX_BYTES, use_gpu=self.use_gpu,
                                                                   inference=self.inference)
        table = prediction_table(paths, probabilities, errors, self.classes, self.model_version, found)
        part = self.store.write_part(table)
        self.done.update(paths)  # published: never again, even if the CSV append below fails
        self.store.append_csv(table)
        unreadable = [(p, e) for p, e in zip(paths, errors) if e]
        logger.info("classified %d file(s) in %.1f s (%d unreadable) -> %s", len(paths) - len(unreadable),
                    time.perf_counter() - started, len(unreadable), part)
        return BatchResult(str(self.store.root), classified=len(paths) - len(unreadable),
                           unreadable=unreadable, parts=[str(part)])

    def sleep(self, seconds: float) -> None:
        """Sleep in short slices so that a stop request ends the wait at once."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


@contextmanager
def _stop_on_interrupt(job: BatchJob) -> Iterator[None]:
    """The first Ctrl-C asks the job to stop once the current part is written; a second one aborts.

    Signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        job.stop_requested = True
        signal.signal(signal.SIGINT, previous)
        logger.warning("Ctrl-C: stopping after the current poll (Ctrl-C again to abort)")

    previous = signal.getsignal(signal.SIGINT) or signal.default_int_handler
    signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish(result: BatchResult) -> BatchResult:
    (logger.warning if result.unreadable else logger.info)(format_summary(result))
    return result


def predict_batch(model_dir: str | Path, input: str, output: str | Path,
                  batch_size: int = DEFAULT_BATCH_SIZE, use_gpu: bool = False,
                  inference: InferenceConfig | None = None) -> BatchResult:
    """Classify every file under ``input`` not yet in ``output``, all at once."""
    job = BatchJob(model_dir, input, output, batch_size=batch_size, use_gpu=use_gpu, inference=inference)
    with _stop_on_interrupt(job):
        result = job.poll(wait_until_stable=False)
    if not result.parts and not result.already_done:
        logger.warning("no files under %s", input)
    return _finish(result)


def watch(model_dir: str | Path, input: str, output: str | Path, interval: float = DEFAULT_INTERVAL,
          max_polls: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, use_gpu: bool = False,
          settle_s: float | None = None, inference: InferenceConfig | None = None) -> BatchResult:
    """Poll ``input`` every ``interval`` seconds and classify files as they arrive (each once).

    Runs until Ctrl-C (or ``max_polls`` polls). A listing that fails after the first poll (a network
    error, the folder briefly gone) is logged and retried at the next poll rather than ending the watch.
    """
    if interval < 0:
        raise ValueError(f"interval must be >= 0 seconds; got {interval}")
    if max_polls is not None and max_polls < 1:
        raise ValueError(f"max_polls must be >= 1; got {max_polls}")
    if settle_s is None:  # a writer paused for a whole interval was never taken before; keep it so
        settle_s = max(DEFAULT_SETTLE_S, interval)
    if not 0 <= settle_s < 1e9:
        raise ValueError(f"settle_s must be a number of seconds >= 0; got {settle_s}")
    job = BatchJob(model_dir, input, output, batch_size=batch_size, use_gpu=use_gpu, inference=inference)
    total = BatchResult(str(job.store.root))
    logger.info("watching %s every %g s; predictions go to %s (Ctrl-C to stop)", input, interval, job.store.root)
    with _stop_on_interrupt(job):
        while True:
            try:
                total.add(job.poll(wait_until_stable=True, settle_s=settle_s))
            except (OSError, DataError) as exc:
                if total.polls == 0:
                    raise
                logger.warning("poll of %s failed (%s); retrying at the next poll", input, exc)
                total.polls += 1
            if job.stop_requested or (max_polls is not None and total.polls >= max_polls):
                break
            job.sleep(interval)
            if job.stop_requested:
                break
    return _finish(total)


def format_summary(result: BatchResult, limit: int = SUMMARY_ERRORS) -> str:
    """N classified, M unreadable (the first few with their errors), and where the files are."""
    lines = [f"{result.classified} file(s) classified, {len(result.unreadable)} unreadable"
             + (f", {result.already_done} already classified earlier" if result.already_done else "")]
    lines += [f"  {path}: {error}" for path, error in result.unreadable[:limit]]
    if len(result.unreadable) > limit:
        lines.append(f"  ... and {len(result.unreadable) - limit} more (rows with an error in {COMBINED_CSV})")
    if result.parts:
        lines.append(f"new part file(s): {', '.join(result.parts)}")
    combined = Path(result.output) / COMBINED_CSV
    lines.append(f"all predictions: {combined}" if combined.is_file() else f"no predictions yet in {result.output}")
    return "\n".join(lines)
