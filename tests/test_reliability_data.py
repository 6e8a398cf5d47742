"""Data faults: corrupt, truncated, empty and non-image files, and valid images in unusual modes
(CMYK, 16-bit grey, grey, alpha, palette), through ingest, `asl-platform train` and batch inference.

Every bad file must be reported by path with its error at every stage; every wrong-mode image must
decode to RGB and be used (trained on, classified), never skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import colour_image
from PIL import Image

from asl_platform.data.decode import decode_image
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.data.reading import find_unreadable, image_dataset
from asl_platform.model import Predictor, get_backbone_spec, resolve_model_dir

CLASSES = ["A", "B", "C"]
GOOD_PER_CLASS = 6


@dataclass
class FaultyDataset:
    root: Path
    good: list[str]  # plain RGB PNG/JPEG
    wrong_mode: list[str]  # valid images in other modes: must be used, not skipped
    bad: dict[str, str]  # path -> a fragment its error must contain ("" where the wording may vary)

    @property
    def readable(self) -> list[str]:
        return self.good + self.wrong_mode


def _save(image: Image.Image, path: Path, fmt: str, **options) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **options)
    return str(path)


def _colour(label: str, seed: int, size: int = 48) -> Image.Image:
    return Image.open(io.BytesIO(colour_image(label, size=size, seed=seed))).convert("RGB")


def _encoded(label: str, seed: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    _colour(label, seed).save(buffer, format=fmt)
    return buffer.getvalue()


def _grey16() -> Image.Image:
    """Three bands of 16-bit grey, 0 / 25700 / 65535, which must map to 0 / 100 / 255 in 8 bits."""
    values = np.zeros((48, 48), dtype=np.uint16)
    values[16:32], values[32:] = 257 * 100, 65535
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return image


def _rgba(label: str) -> Image.Image:
    """The class colour, with a fully transparent top half (must come out white, not black)."""
    pixels = np.asarray(_colour(label, 50).convert("RGBA")).copy()
    pixels[:24, :, 3] = 0
    return Image.fromarray(pixels, mode="RGBA")


def _palette(label: str) -> Image.Image:
    image = _colour(label, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return image


def build_faulty_dataset(root: Path) -> FaultyDataset:
    """<root>/<A|B|C>/ with good images, wrong-mode images and every kind of bad file mixed in."""
    good, wrong_mode = [], []
    for label in CLASSES:
        for seed in range(GOOD_PER_CLASS):
            fmt = "PNG" if seed % 2 else "JPEG"
            good.append(_save(_colour(label, seed), root / label / f"{label}{seed}.{fmt.lower()}", fmt))
    a, b, c = (root / label for label in CLASSES)
    wrong_mode += [
        _save(_colour("A", 40).convert("CMYK"), a / "cmyk.jpg", "JPEG"),
        _save(_grey16(), a / "grey16.png", "PNG"),
        _save(_colour("B", 41).convert("L"), b / "grey.png", "PNG"),
        _save(_colour("B", 42).convert("L"), b / "grey.jpg", "JPEG"),
        _save(_rgba("C"), c / "alpha.png", "PNG"),
        _save(_palette("C"), c / "palette.png", "PNG"),
        _save(_colour("C", 43).convert("LA"), c / "grey_alpha.png", "PNG"),
    ]
    jfif_header = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    png, jpeg = _encoded("A", 70, "PNG"), _encoded("B", 71, "JPEG")
    files = {
        a / "corrupt.jpg": (jfif_header + np.random.default_rng(0).bytes(4000), "not an image"),
        a / "truncated.png": (png[: len(png) * 2 // 3], "corrupt or truncated"),
        b / "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt or truncated"),
        b / "empty.jpg": (b"", "empty file"),
        c / "text.jpg": (b"this is a text file, not a photo\n" * 20, "not an image"),
        c / "notes.txt": (b"labelling notes\n", "not an image"),
    }
    bad = {}
    for path, (data, fragment) in files.items():
        path.write_bytes(data)
        bad[str(path)] = fragment
    return FaultyDataset(root, good, wrong_mode, bad)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> FaultyDataset:
    return build_faulty_dataset(tmp_path_factory.mktemp("faulty") / "data")


def _assert_bad_reported(errors: dict[str, str], dataset: FaultyDataset) -> None:
    """Exactly the bad files have an error, each with the expected reason."""
    assert sorted(path for path, error in errors.items() if error) == sorted(dataset.bad)
    for path, fragment in dataset.bad.items():
        assert fragment in errors[path], (path, errors[path])


# --------------------------------------------------------------------------- (a) ingest


def test_wrong_mode_images_decode_to_rgb_with_the_right_pixels(faulty):
    for path in faulty.wrong_mode:
        image = decode_image(Path(path).read_bytes())
        assert image.mode == "RGB" and image.size == (48, 48), path
    grey16 = np.asarray(decode_image(Path(faulty.root / "A" / "grey16.png").read_bytes()))
    assert grey16[0, 0].tolist() == [0, 0, 0] and grey16[20, 0].tolist() == [100] * 3
    assert grey16[40, 0].tolist() == [255] * 3
    alpha = np.asarray(decode_image(Path(faulty.root / "C" / "alpha.png").read_bytes()))
    assert (alpha[:24] == 255).all()  # transparent: composited on white
    assert alpha[24:, :, 2].mean() > 150 and alpha[24:, :, 0].mean() < 100  # opaque: still blue (class C)
    cmyk = np.asarray(decode_image(Path(faulty.root / "A" / "cmyk.jpg").read_bytes()))
    assert cmyk[..., 0].mean() > 150 and cmyk[..., 1].mean() < 100  # still red (class A), not inverted


def test_ingest_decodes_every_readable_file_and_names_every_bad_one(ray_local, faulty):
    index = list_images(str(faulty.root))
    assert sorted(index.paths) == sorted(faulty.readable + list(faulty.bad))  # .txt included, so it is reported
    prep = get_backbone_spec("tiny").preprocessing
    rows = {}
    for batch in image_dataset(index, prep, batch_size=4).iter_batches(batch_size=None, batch_format="numpy"):
        for path, error, image in zip(batch["path"], batch["error"], batch["image"]):
            rows[str(path)] = (str(error), image)
    assert sorted(rows) == sorted(index.paths)  # every file exactly one row
    _assert_bad_reported({path: error for path, (error, _) in rows.items()}, faulty)
    for path in faulty.readable:
        image = rows[path][1]
        assert image.shape == (3, prep.image_size, prep.image_size) and np.isfinite(image).all(), path

    # The driver-side check that `train` runs finds exactly the same files with the same errors.
    found = find_unreadable(index.paths, draft_size=prep.image_size, batch_size=4)
    assert found == {path: error for path, (error, _) in rows.items() if error}
    assert list(found) == [p for p in index.paths if p in found]  # in listing order


# --------------------------------------------------------------------------- (b) training


@pytest.mark.e2e
def test_train_finishes_exports_a_model_and_lists_every_bad_file(ray_local, faulty, tmp_path, caplog):
    from asl_platform.config import load_config
    from asl_platform.pipeline import run_train

    cfg = load_config(None, [
        "model.backbone=tiny", "model.weights=none", "model.hidden_size=16",
        "data.val_fraction=0.25", "data.test_fraction=0.25", "data.batch_size=4",
        "train.epochs=2", "train.batch_size=4", "train.num_workers=1", "train.cpus_per_worker=0.5",
        "train.early_stopping_patience=2", "run.name=faulty",
    ], values={"data.root": str(faulty.root), "run.output_dir": str(tmp_path / "asl_runs")})
    with caplog.at_level(logging.INFO, logger="asl_platform"):
        summary = run_train(cfg)
    assert f"skipped {len(faulty.bad)} unreadable file(s):" in caplog.text  # the count, then path: error lines
    assert f"{faulty.root / 'B' / 'empty.jpg'}: empty file" in caplog.text

    run_dir = tmp_path / "asl_runs" / "faulty"
    with open(run_dir / "skipped_files.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "error"]  # the pipeline's columns
    _assert_bad_reported({row["path"]: row["error"] for row in rows}, faulty)
    assert summary["skipped_files"] == len(faulty.bad) and summary["epochs"] == [1, 2]
    assert json.loads((run_dir / "job_summary.json").read_text())["skipped_files"] == len(faulty.bad)

    version = resolve_model_dir(tmp_path / "asl_runs" / "models" / "faulty")
    meta = json.loads((version / "model.json").read_text())
    assert meta["data"]["skipped_files"] == len(faulty.bad)
    # Every readable train file (wrong modes included) was trained on in each epoch, and nothing else.
    split = stratified_split(list_images(str(faulty.root)), 0.25, 0.25, cfg.data.seed)
    readable_train = [p for p, s in zip(split.paths, split.splits) if s == "train" and p not in faulty.bad]
    assert set(readable_train) & set(faulty.wrong_mode)
    state = torch.load(Path(meta["checkpoint"]) / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert [row["train_images"] for row in state["history"]] == [len(readable_train)] * len(state["history"])
    test_files = set((version / "test_split.txt").read_text().split())

    # The held-out test report lists the bad test files too; the wrong-mode ones are evaluated.
    report = json.loads((version / "eval" / "test.json").read_text())
    bad_in_test = sorted(test_files & set(faulty.bad))
    assert sorted(f["path"] for f in report["skipped_files"]) == bad_in_test
    assert report["images"] == len(test_files) - len(bad_in_test)

    # The exported model loads on its own and classifies every readable image, wrong modes included.
    images = [decode_image(Path(p).read_bytes()) for p in faulty.readable]
    probabilities = Predictor(version).predict_with_hands(images)[0]
    assert probabilities.shape == (len(images), len(CLASSES)) and np.allclose(probabilities.sum(1), 1, atol=1e-4)


# --------------------------------------------------------------------------- (c) batch inference


def test_batch_inference_reports_every_bad_file_and_classifies_the_rest(ray_local, faulty, colour_model, tmp_path):
    from asl_platform.batch_predict import PredictionStore, predict_batch

    result = predict_batch(colour_model, str(faulty.root), tmp_path / "out", batch_size=4)
    assert sorted(path for path, _ in result.unreadable) == sorted(faulty.bad)
    assert result.classified == len(faulty.readable)
    rows = {row["path"]: row for row in PredictionStore(tmp_path / "out").read().to_pylist()}
    assert sorted(rows) == sorted(faulty.readable + list(faulty.bad))
    _assert_bad_reported({path: row["error"] for path, row in rows.items()}, faulty)
    for path in faulty.bad:
        assert rows[path]["letter"] is None and rows[path]["probability"] is None
    for path in faulty.readable:
        assert rows[path]["error"] == "" and rows[path]["letter"] in ("A", "B", "C", "space"), path
    for path in faulty.good + [str(faulty.root / "A" / "cmyk.jpg")]:  # colour kept: the right letter
        assert rows[path]["letter"] == Path(path).parent.name, (path, rows[path]["top3"])
