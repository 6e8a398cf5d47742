"""asl_platform.batch_predict: batch inference over a folder with bad files, the CLI, and watch mode (real Ray)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from asl_platform.batch_predict import APPENDING_MARKER, COMBINED_CSV, BatchJob, PredictionStore, predict_batch, watch
from asl_platform.cli import main
from asl_platform.data.decode import decode_image
from asl_platform.data.listing import scan_files
from asl_platform.errors import DataError
from asl_platform.model import Predictor, build_classifier, save_model_dir

CLASSES = ["A", "B", "C", "Z"]


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _make_input(root: Path) -> tuple[list[str], dict[str, str]]:
    """Good PNGs in nested subfolders, plus a corrupt JPEG, a zero-byte file, a .txt and hidden files.

    Returns (good paths, {bad path: expected error fragment}); hidden files are in neither."""
    good = [_png(root / "top.png", 1), _png(root / "A" / "a1.png", 2), _png(root / "B" / "deep" / "er" / "b1.png", 3)]
    (root / "A" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "B" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("uploaded by someone\n")
    (root / ".DS_Store").write_bytes(b"junk")
    _png(root / ".ipynb_checkpoints" / "hidden.png", 4)
    bad = {str(root / "A" / "broken.jpg"): "corrupt", str(root / "B" / "empty.png"): "empty file",
           str(root / "notes.txt"): "not an image"}
    return [str(p) for p in good], bad


def _direct(model_dir: Path, paths: list[str]) -> np.ndarray:
    return Predictor(model_dir).predict_with_hands([decode_image(Path(p).read_bytes()) for p in paths])[0]


def _rows(output: Path) -> list[dict]:
    return PredictionStore(output).read().to_pylist()


def _check_good_rows(model_dir: Path, rows: list[dict], paths: list[str]) -> None:
    by_path = {row["path"]: row for row in rows}
    expected = _direct(model_dir, paths)
    for path, probs in zip(paths, expected):
        row = by_path[path]
        assert row["error"] == ""
        assert row["letter"] == CLASSES[int(np.argmax(probs))]
        assert row["probability"] == pytest.approx(float(probs.max()), rel=1e-4, abs=1e-6)
        top = [part.split(":")[0] for part in row["top3"].split()]
        assert top == [CLASSES[i] for i in np.argsort(-probs)[:3]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_classifier("tiny", "none", num_classes=len(CLASSES), hidden_size=16, dropout=0.0).eval()
    directory = tmp_path_factory.mktemp("models") / "v1"
    save_model_dir(model, directory, CLASSES, version="v1")
    return directory


# --------------------------------------------------------------------------- listing (no Ray)


def test_scan_files_lists_every_non_hidden_file_and_skips_the_output(tmp_path):
    root = tmp_path / "in"
    good, bad = _make_input(root)
    _png(root / "out" / "x.png", 5)  # an output folder inside the input is not input
    expected = sorted(good + list(bad))

    assert list(scan_files(str(root), exclude=[str(root / "out")])) == expected
    assert list(scan_files(f"file://{root}", exclude=[f"file://{root}/out/"])) == expected
    assert str(root / "out" / "x.png") in scan_files(str(root))
    stamps = scan_files(str(root))
    assert stamps[str(root / "B" / "empty.png")][0] == 0
    assert stamps[str(root / "top.png")] == (Path(root / "top.png").stat().st_size, Path(root / "top.png").stat().st_mtime_ns)


def test_scan_files_missing_or_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="input not found"):
        scan_files(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="not a folder"):
        scan_files(str(_png(tmp_path / "one.png", 0)))


# --------------------------------------------------------------------------- batch inference (real Ray)


def test_batch_over_folder_with_corrupt_files_lists_every_file_once(ray_local, tmp_path, tiny_model, capsys):
    root = tmp_path / "in"
    good, bad = _make_input(root)
    output = root / "predictions"  # inside the input: must not be classified itself

    assert main(["predict-batch", "--model", str(tiny_model), "--input", str(root), "--output", str(output),
                 "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "3 file(s) classified, 3 unreadable" in printed and str(output / COMBINED_CSV) in printed

    parts = PredictionStore(output).parts()
    assert len(parts) == 1
    rows = pq.read_table(parts[0]).to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(good + list(bad))  # each file exactly once
    for row in rows:
        assert row["model_version"] == f"{tiny_model.parent.name}/v1" and row["classified_at"] is not None
        if row["path"] in bad:
            assert bad[row["path"]] in row["error"]
            assert row["letter"] is None and row["probability"] is None and row["top3"] is None
    _check_good_rows(tiny_model, rows, good)

    with open(output / COMBINED_CSV, newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["path"] for r in csv_rows] == [r["path"] for r in rows]
    assert {r["path"]: r["letter"] for r in csv_rows} == {r["path"]: r["letter"] or "" for r in rows}
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no temporary files left

    # A second run over the same output classifies nothing again.
    again = predict_batch(tiny_model, str(root), output)
    assert (again.classified, again.unreadable, again.parts, again.already_done) == (0, [], [], 6)
    assert PredictionStore(output).parts() == parts

def test_cli_errors_the_user_must_fix_exit_2(tmp_path, tiny_model):
    out = str(tmp_path / "out")
    assert main(["predict-batch", "--model", str(tiny_model), "--input", str(tmp_path / "missing"), "--output", out]) == 2
    assert main(["predict-batch", "--model", str(tmp_path / "no-model"), "--input", str(tmp_path), "--output", out]) == 2
    assert main(["predict-batch", "--model", str(tiny_model), "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert main(["predict-batch", "--model", str(tiny_model), "--input", str(tmp_path), "--output", out,
                 "--max-polls", "2"]) == 2
    assert not Path(out).exists()


def test_watch_classifies_new_stable_files_once_across_polls_and_restarts(ray_local, tmp_path, tiny_model):
    root, output = tmp_path / "uploads", tmp_path / "out"
    first = [str(_png(root / "a.png", 1)), str(_png(root / "sub" / "b.png", 2))]
    growing, data = root / "sub" / "growing.png", _png_bytes(7)
    growing.write_bytes(data[: len(data) // 2])  # still being uploaded: half of its bytes so far
    job = BatchJob(tiny_model, str(root), output, batch_size=4)

    assert job.poll(wait_until_stable=True).parts == []  # first sight: not yet known to be complete
    with growing.open("ab") as handle:  # the upload goes on between polls
        handle.write(data[len(data) // 2:])
    later, bad = [str(_png(root / "c.png", 3))], str(root / "bad.jpg")  # new files arrive
    Path(bad).write_bytes(b"\xff\xd8\xff garbage")
    result = job.poll(wait_until_stable=True)
    assert result.classified == 2 and result.unreadable == [] and len(result.parts) == 1
    assert {row["path"] for row in _rows(output)} == set(first)  # growing changed, c and bad just seen: not yet

    result = job.poll(wait_until_stable=True)  # all three unchanged since the last poll
    assert result.classified == 2 and [p for p, _ in result.unreadable] == [bad] and len(result.parts) == 1
    assert job.poll(wait_until_stable=True).parts == []  # nothing new

    rows = _rows(output)
    assert sorted(row["path"] for row in rows) == sorted(first + later + [bad, str(growing)])
    _check_good_rows(tiny_model, rows, first + later + [str(growing)])  # growing was read whole

    # A restarted watcher classifies nothing old, only a file added while it was down.
    added = str(_png(root / "d.png", 4))
    restarted = watch(tiny_model, str(root), output, interval=0.05, max_polls=3)
    assert restarted.polls == 3 and restarted.classified == 1 and restarted.unreadable == []
    assert len(restarted.parts) == 1 and restarted.already_done == 5
    paths = [row["path"] for row in _rows(output)]
    assert len(paths) == len(set(paths)) == 6 and added in paths
    with open(output / COMBINED_CSV, newline="") as handle:
        assert sorted(r["path"] for r in csv.DictReader(handle)) == sorted(paths)


def _age(path: Path, seconds: float) -> None:
    """Set a file's modification time ``seconds`` into the past (an upload that finished then)."""
    past = Path(path).stat().st_mtime - seconds
    os.utime(path, (past, past))


def test_watch_takes_settled_files_at_first_sight_and_waits_for_fresh_ones(ray_local, tmp_path, tiny_model):
    root, output = tmp_path / "uploads", tmp_path / "out"
    old = [_png(root / "old1.png", 1), _png(root / "sub" / "old2.png", 2)]
    for path in old:
        _age(path, 7200)
    fresh = _png(root / "fresh.png", 3)  # just written: may still be growing (settle_s is an hour: on any machine)
    unknown = _png(root / "unknown.png", 4)
    os.utime(unknown, (0, 0))  # no modification time (0): its age is unknown, so it is not taken at first sight

    first = watch(tiny_model, str(root), output, interval=0, max_polls=1, settle_s=3600)
    assert first.polls == 1 and first.classified == 2  # --max-polls 1 classifies what was already there
    assert {row["path"] for row in _rows(output)} == {str(p) for p in old}

    again = watch(tiny_model, str(root), output, interval=0, max_polls=2, settle_s=3600)
    assert again.classified == 2 and again.already_done == 2  # fresh and unknown: taken once two polls agreed
    assert sorted(row["path"] for row in _rows(output)) == sorted(map(str, old + [fresh, unknown]))
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="settle_s"):
            watch(tiny_model, str(root), output, settle_s=bad)


def test_csv_grows_by_appending_and_is_rebuilt_after_a_crash_mid_append(ray_local, tmp_path, tiny_model):
    root, output = tmp_path / "uploads", tmp_path / "out"
    _png(root / "a.png", 1)
    job = BatchJob(tiny_model, str(root), output)
    job.poll(wait_until_stable=False)
    csv_path = output / COMBINED_CSV
    first_bytes = csv_path.read_bytes()
    _png(root / "b.png", 2)
    job.poll(wait_until_stable=False)

    content = csv_path.read_bytes()
    assert content.startswith(first_bytes)  # appended, not rewritten
    assert content.count(b'"path"') == 1  # one header
    with open(csv_path, newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == [r["path"] for r in _rows(output)]
    assert not (output / APPENDING_MARKER).exists()

    # A crash half-way through an append leaves a torn last line and the marker behind.
    with csv_path.open("ab") as handle:
        handle.write(b'"' + str(root).encode() + b'/c.png","A",0.')
    (output / APPENDING_MARKER).touch()
    assert PredictionStore(output).csv_is_stale()
    BatchJob(tiny_model, str(root), output)  # the next run repairs it before classifying anything
    assert csv_path.read_bytes() == content and not (output / APPENDING_MARKER).exists()

    # An append that failed within a running watcher (marker left) is repaired by its next append.
    with csv_path.open("ab") as handle:
        handle.write(b'"torn')
    (output / APPENDING_MARKER).touch()
    _png(root / "c.png", 3)
    job.poll(wait_until_stable=False)
    with open(csv_path, newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == [r["path"] for r in _rows(output)]
    assert len(_rows(output)) == 3 and not (output / APPENDING_MARKER).exists()
