"""asl_platform.stages.evaluate: metrics checked against explicit loops, report files, and real Ray inference."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asl_platform.data.decode import decode_image
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.inference import predict_paths
from asl_platform.model import Predictor, build_classifier, save_model_dir
from asl_platform.stages.evaluate import compute_report, evaluate_folder, write_report

CLASSES = ["A", "B", "C", "D"]


def _example() -> tuple[np.ndarray, np.ndarray]:
    """9 images; D has no images (support 0) but is predicted; C is never predicted; A->B dominates."""
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 1])
    predicted = np.array([0, 1, 1, 3, 1, 0, 1, 3, 1])
    rng = np.random.default_rng(3)
    probabilities = rng.uniform(0.01, 0.2, (len(labels), len(CLASSES)))
    probabilities[np.arange(len(labels)), predicted] = 1.0
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return labels, probabilities


def test_compute_report_matches_explicit_loops():
    labels, probabilities = _example()
    report = compute_report(labels, probabilities, CLASSES)
    predicted = [int(np.argmax(row)) for row in probabilities]
    n, c = len(labels), len(CLASSES)

    confusion = [[0] * c for _ in range(c)]
    for t, p in zip(labels, predicted):
        confusion[t][p] += 1
    assert report["confusion"] == confusion
    assert report["images"] == n
    assert report["accuracy"] == pytest.approx(sum(t == p for t, p in zip(labels, predicted)) / n)
    assert report["accuracy"] == pytest.approx(3 / 9)
    assert report["loss"] == pytest.approx(-sum(math.log(probabilities[i, labels[i]]) for i in range(n)) / n)

    f1s = []
    for k, row in enumerate(report["per_class"]):
        tp = sum(1 for t, p in zip(labels, predicted) if t == k and p == k)
        n_pred = sum(1 for p in predicted if p == k)
        support = sum(1 for t in labels if t == k)
        assert row["class"] == CLASSES[k] and row["support"] == support
        precision = tp / n_pred if n_pred else 0.0
        assert row["precision"] == pytest.approx(precision)
        if support:
            recall = tp / support
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            assert row["recall"] == pytest.approx(recall) and row["f1"] == pytest.approx(f1)
            f1s.append(f1)
    assert report["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))  # over A, B, C only

    by_class = {row["class"]: row for row in report["per_class"]}
    assert by_class["C"]["precision"] == 0.0 and by_class["C"]["recall"] == 0.0  # never predicted
    assert by_class["D"]["support"] == 0 and by_class["D"]["recall"] is None  # no images of D
    assert by_class["D"]["precision"] == 0.0 and by_class["D"]["f1"] is None
    assert by_class["A"]["precision"] == pytest.approx(1 / 2) and by_class["A"]["recall"] == pytest.approx(1 / 4)

    # By count, then by rate (count / support of the true class), then class order.
    pairs = [(p["true"], p["predicted"], p["count"], p["rate"]) for p in report["most_confused"]]
    assert pairs == [
        ("A", "B", 2, pytest.approx(2 / 4)),
        ("C", "B", 1, pytest.approx(1 / 2)),
        ("C", "D", 1, pytest.approx(1 / 2)),
        ("B", "A", 1, pytest.approx(1 / 3)),
        ("A", "D", 1, pytest.approx(1 / 4)),
    ]
    json.dumps(report)  # JSON-serialisable as is


def test_compute_report_loss_is_clipped_and_bad_inputs_refused():
    labels = np.array([0, 1])
    probabilities = np.array([[1.0, 0.0], [1.0, 0.0]])  # p(true) = 0 for the second image
    report = compute_report(labels, probabilities, ["A", "B"])
    assert report["loss"] == pytest.approx(-(math.log(1.0) + math.log(1e-12)) / 2)
    assert report["most_confused"] == [{"true": "B", "predicted": "A", "count": 1, "rate": 1.0}]
    with pytest.raises(ValueError, match="shape"):
        compute_report(labels, probabilities, ["A", "B", "C"])
    with pytest.raises(ValueError, match="NaN"):
        compute_report(labels, np.array([[np.nan, np.nan], [1.0, 0.0]]), ["A", "B"])


def test_write_report_writes_json_markdown_and_png(tmp_path):
    labels, probabilities = _example()
    report = compute_report(labels, probabilities, CLASSES)
    report.update({"missing_classes": ["D"], "skipped_classes": {"Q": 3},
                   "skipped_files": [{"path": "/x/broken.jpg", "error": "corrupt"}]})
    files = write_report(report, tmp_path / "out", "cross", "A title")

    assert set(files) == {"json", "markdown", "confusion_png"}
    assert json.loads(open(files["json"]).read()) == json.loads(json.dumps(report))
    markdown = open(files["markdown"]).read()
    assert markdown.startswith("# A title")
    assert "33.33%" in markdown and "| class | precision | recall | F1 | support |" in markdown
    assert "| D | 0.000 | n/a | n/a | 0 |" in markdown
    assert "Q (3)" in markdown and "/x/broken.jpg" in markdown and "D" in markdown
    assert "(cross_confusion.png)" in markdown and files["confusion_png"].endswith("cross_confusion.png")
    with Image.open(files["confusion_png"]) as image:
        assert image.format == "PNG"
        assert image.size[0] >= 800 and image.size[1] >= 600


# --------------------------------------------------------------------------- real Ray


def _make_folder(root):
    """Classes A, B, C (known to the model) and Q (unknown); 5 PNGs each, plus one corrupt file in A."""
    rng = np.random.default_rng(0)
    colours = {"A": (200, 40, 40), "B": (40, 200, 40), "C": (40, 40, 200), "Q": (200, 200, 40)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(rng.normal(colour, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "A" / "9_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real saved model (tiny backbone, fixed seed) whose classes are A, B, C, Z: Z is not in the folder."""
    torch.manual_seed(0)
    model = build_classifier("tiny", "none", num_classes=4, hidden_size=16, dropout=0.0).eval()
    directory = tmp_path_factory.mktemp("model") / "v1"
    save_model_dir(model, directory, ["A", "B", "C", "Z"], version="v1",
                   config={"data": {"val_fraction": 0.2, "test_fraction": 0.4, "seed": 1}})
    return directory


def _direct(model_dir, paths):
    predictor = Predictor(model_dir)
    return predictor.predict_with_hands([decode_image(open(p, "rb").read()) for p in paths])[0]


def test_predict_paths_and_evaluate_all(ray_local, tmp_path, tiny_model):
    root = _make_folder(tmp_path / "data")
    index = list_images(str(root))
    paths = list(reversed(index.paths))  # not the listing order: results must follow this order
    broken = str(root / "A" / "9_broken.jpg")

    probabilities, errors = predict_paths(tiny_model, paths, batch_size=8)
    assert probabilities.shape == (len(paths), 4) and len(errors) == len(paths)
    bad = [p for p, e in zip(paths, errors) if e]
    assert bad == [broken]
    assert np.isnan(probabilities[paths.index(broken)]).all()
    good = [i for i, e in enumerate(errors) if not e]
    np.testing.assert_allclose(probabilities[good], _direct(tiny_model, [paths[i] for i in good]), rtol=1e-4, atol=1e-6)

    report = evaluate_folder(tiny_model, str(root), split="all", output_dir=tmp_path / "eval")
    assert report["skipped_files"][0]["path"] == broken and len(report["skipped_files"]) == 1
    assert report["skipped_classes"] == {"Q": 5}
    assert report["missing_classes"] == ["Z"]
    assert report["images"] == 15 and report["model_version"] == "v1" and report["split"] == "all"
    by_class = {row["class"]: row for row in report["per_class"]}
    assert by_class["Z"]["support"] == 0 and by_class["Z"]["recall"] is None
    assert [by_class[c]["support"] for c in "ABC"] == [5, 5, 5]
    assert report["files"]["json"].endswith("data.json")  # name defaults to the folder's name
    markdown = open(report["files"]["markdown"]).read()
    assert "Z" in markdown.split("excluded from macro F1")[1].splitlines()[0]


def test_evaluate_test_split_uses_the_training_split(ray_local, tmp_path, tiny_model):
    root = _make_folder(tmp_path / "data")
    expected = stratified_split(list_images(str(root)), 0.2, 0.4, 1).subset("test")
    expected_paths = [p for p, y in zip(expected.paths, expected.labels) if expected.classes[y] in "ABC"]
    readable = [p for p in expected_paths if not p.endswith("broken.jpg")]
    assert len(expected_paths) == 6  # round(0.4 * 5) = 2 per class, for A, B, C
    assert len(readable) == 5  # with seed 1 the corrupt file of A is in the test split

    report = evaluate_folder(tiny_model, str(root), split="test", output_dir=tmp_path / "eval")
    assert report["split"] == "test" and report["images"] == len(readable)
    with open(report["files"]["predictions"]) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(readable)
    assert [f["path"] for f in report["skipped_files"]] == [p for p in expected_paths if p not in readable]

    direct = _direct(tiny_model, readable).argmax(axis=1)
    classes = ["A", "B", "C", "Z"]
    truth = [classes.index(p.split("/")[-2]) for p in readable]
    assert report["accuracy"] == pytest.approx(float(np.mean(direct == np.array(truth))))
    confusion = np.zeros((4, 4), dtype=int)
    for t, p in zip(truth, direct):
        confusion[t, p] += 1
    assert report["confusion"] == confusion.tolist()
    assert report["files"]["json"].endswith("test.json")


def test_saved_test_split_is_used_and_new_files_do_not_leak_in(ray_local, tmp_path, tiny_model):
    """A model with test_split.txt is evaluated on exactly those files, even after the folder grew."""
    import shutil as _shutil

    from asl_platform.stages.ingest import TEST_SPLIT_FILE

    root = _make_folder(tmp_path / "data")
    model_dir = tmp_path / "model"
    _shutil.copytree(tiny_model, model_dir)
    chosen = [p for p in list_images(str(root)).paths if p.endswith(".png")][:3]
    (model_dir / TEST_SPLIT_FILE).write_text("\n".join(chosen) + "\n")
    _shutil.copy(chosen[0], Path(chosen[0]).with_name("added_later.png"))  # would reshuffle a recomputed split

    report = evaluate_folder(model_dir, str(root), split="test")
    assert report["images"] == 3
    assert report["accuracy"] == pytest.approx(
        float(np.mean(_direct(model_dir, chosen).argmax(axis=1) == [["A", "B", "C", "Z"].index(p.split("/")[-2]) for p in chosen]))
    )


def test_evaluate_use_gpu_reaches_the_inference_actors(tmp_path, tiny_model, monkeypatch):
    """`asl-platform evaluate --use-gpu` (and `train` with train.use_gpu) ask Ray Data for GPU actors.
    No GPU here, so the actor pool is replaced by the model run in-process, and the flag is recorded."""
    import asl_platform.inference
    from asl_platform.cli import main

    asked = []

    def in_process(model_dir, paths, batch_size=64, max_bytes=0, use_gpu=False, **_):
        asked.append(use_gpu)
        return _direct(model_dir, paths), [""] * len(paths)

    monkeypatch.setattr(asl_platform.inference, "predict_paths", in_process)
    root = tmp_path / "data"
    for name, colour in {"A": (200, 40, 40), "B": (40, 200, 40)}.items():
        (root / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour).save(root / name / "0.png")
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(root), "--output", str(tmp_path / "r"),
                 "--use-gpu"]) == 0
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(root), "--output", str(tmp_path / "r")]) == 0
    assert asked == [True, False]
    assert json.loads((tmp_path / "r" / "data.json").read_text())["images"] == 2


def test_whose_image_it_is_comes_from_the_file_name_when_every_name_says():
    from asl_platform.stages.evaluate import people_of

    people = people_of(["p/A/mariia00-3.jpg", "p/B/mariia00-4.png", "p/A/adi3220-0.jpg"])
    assert people.tolist() == ["mariia00", "mariia00", "adi3220"]
    assert people_of(["w/A/mariia00-3.jpg", "w/A/photo.jpg"]) is None  # one name says nothing: the whole folder
    assert people_of(["w/A/adi-1.jpg", "w/B/adi-2.jpg"]) is None  # one person: nothing to split by
