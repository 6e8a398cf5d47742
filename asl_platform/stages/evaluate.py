"""Evaluate a model directory on an image folder: accuracy, loss, per-class P/R/F1, confusion matrix.

Inference runs through Ray Data (``asl_platform.inference``: decode in tasks, one ``Predictor`` per actor), so the same code
evaluates a few test images or a whole cross-domain folder. Class names, not indices, join the data
to the model: a folder may lack a class (asl-webcam has no ``Z``) or hold one the model never saw,
and both are reported instead of silently skewing the numbers.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asl_platform.config import InferenceConfig
from asl_platform.data.listing import join_classes, list_images, merge_sources
from asl_platform.data.people import person_in_name
from asl_platform.data.reading import summarize_errors
from asl_platform.data.storage import is_remote, strip_file_scheme
from asl_platform.errors import DataError, UserError
from asl_platform.hands.rows import INPUT_DIM
from asl_platform.inference import PathAnswers, predict_paths_with_hands
from asl_platform.model import ModelCard
from asl_platform.model.classifier import probabilities
from asl_platform.model.fusion import fuse, score_rules
from asl_platform.model.landmarks import landmark_probabilities
from asl_platform.model.predictor import choose_runtime
from asl_platform.stages.ingest import PreparedData, data_settings, training_split
from asl_platform.training.loop import evaluate
from asl_platform.training.sources import ArrayBatches, evaluation_batch_size
from asl_platform.training.trainer import TrainingResult

logger = logging.getLogger(__name__)

SPLIT_CHOICES = ("all", "test")
PROBABILITY_FLOOR = 1e-12
MOST_CONFUSED = 10
# Used when a model's model.json has no training config (older or hand-made model directories).


# --------------------------------------------------------------------------- metrics


def _check_inputs(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Fail loudly on shapes or values that would give silently wrong metrics."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), len(classes)):
        raise ValueError(
            f"probabilities must have shape (images, classes) = ({len(labels)}, {len(classes)}); got {probabilities.shape}"
        )
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must be integer indices in [0, {len(classes)}); got {labels.dtype} {labels.min()}..{labels.max()}")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or inf (exclude unreadable images first)")
    return labels.astype(np.int64), probabilities


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _per_class(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision/recall/F1 per class; recall and F1 are None where the data has no image of the class
    (nothing to recall), precision is 0.0 where the model never predicts the class."""
    support, predicted, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    rows = []
    for i, name in enumerate(classes):
        precision = float(hits[i] / predicted[i]) if predicted[i] else 0.0
        recall = float(hits[i] / support[i]) if support[i] else None
        if recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(support[i])})
    return rows


def _most_confused(matrix: np.ndarray, classes: list[str], limit: int = MOST_CONFUSED) -> list[dict]:
    """The largest off-diagonal cells: which letters the model mixes up, and how often per true image."""
    support = matrix.sum(axis=1)
    pairs = [
        (int(matrix[t, p]), t, p)
        for t in range(len(classes)) for p in range(len(classes))
        if t != p and matrix[t, p] > 0
    ]
    pairs.sort(key=lambda pair: (-pair[0], -pair[0] / support[pair[1]], pair[1], pair[2]))
    return [
        {"true": classes[t], "predicted": classes[p], "count": count, "rate": float(count / support[t])}
        for count, t, p in pairs[:limit]
    ]


def compute_report(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """All evaluation numbers as a JSON-serialisable dict (plain Python types only).

    Macro F1 averages only the classes that have images, so a class missing from a cross-domain
    folder does not count as a zero.
    """
    labels, probabilities = _check_inputs(labels, probabilities, classes)
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, len(classes))
    per_class = _per_class(matrix, classes)
    true_probability = np.clip(probabilities[np.arange(len(labels)), labels], PROBABILITY_FLOOR, 1.0)
    f1_scores = [row["f1"] for row in per_class if row["f1"] is not None]
    return {
        "images": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)),
        "loss": float(-np.mean(np.log(true_probability))),
        "macro_f1": float(np.mean(f1_scores)),
        "classes": list(classes),
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "most_confused": _most_confused(matrix, list(classes)),
    }


# --------------------------------------------------------------------------- report files


def plot_confusion(report: dict, path: Path, title: str) -> Path:
    """A confusion-matrix PNG: colours are row-normalised (the share of each true class), so rare and
    common classes read alike; raw counts are written in the non-zero cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(report["confusion"], dtype=np.int64)
    classes = report.get("classes") or [row["class"] for row in report["per_class"]]
    count = len(classes)
    support = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, support, out=np.zeros(matrix.shape, dtype=np.float64), where=support > 0)

    figure = Figure(figsize=(12, 10), dpi=100)  # no pyplot: no global state, Agg canvas only
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class's images")
    font = max(5, min(11, int(220 / max(count, 1))))
    for t in range(count):
        for p in range(count):
            if matrix[t, p]:
                axis.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=font,
                          color="white" if shares[t, p] > 0.5 else "black")
    axis.set_xticks(range(count), labels=classes, rotation=90, fontsize=font + 1)
    axis.set_yticks(range(count), labels=classes, fontsize=font + 1)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"{title}\naccuracy {report['accuracy']:.2%}, macro F1 {report['macro_f1']:.3f}, "
                   f"{report['images']} images")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def report_markdown(report: dict, title: str, png_name: str | None = None) -> str:
    """A short human-readable summary of a report, for the model folder."""
    lines = [f"# {title}", ""]
    if report.get("model_dir"):
        version = f" ({report['model_version']})" if report.get("model_version") else ""
        lines.append(f"- **Model**: `{report['model_dir']}`{version}"
                     + (f", image model run by {report['runtime']}" if report.get("runtime") else ""))
    if report.get("data_root"):
        lines.append(f"- **Data**: `{report['data_root']}` (split: {report.get('split', 'all')})")
    lines += [
        f"- **Images**: {report['images']}",
        f"- **Accuracy**: {report['accuracy']:.2%}",
        f"- **Loss** (mean negative log-likelihood): {report['loss']:.4f}",
        f"- **Macro F1**: {report['macro_f1']:.4f} (over the classes that have images)",
    ]
    if report.get("missing_classes"):
        lines.append(f"- **Classes with no images in this data** (excluded from macro F1): "
                     f"{', '.join(report['missing_classes'])}")
    if report.get("skipped_classes"):
        skipped = ", ".join(f"{name} ({n})" for name, n in report["skipped_classes"].items())
        lines.append(f"- **Skipped classes** (unknown to the model; images not evaluated): {skipped}")
    if report.get("skipped_files"):
        lines.append(f"- **Skipped files** (unreadable): {len(report['skipped_files'])}")
    hands = report.get("hands")
    if hands:
        lines += [f"- **Hand found** (MediaPipe): {hands['hand_found']:.1%} of images; accuracy "
                  f"{_pct(hands['accuracy_with_hand'])} with a hand ({hands['images_with_hand']}), "
                  f"{_pct(hands['accuracy_without_hand'])} without ({hands['images_without_hand']})"]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |" + (" hand found |" if hands else ""),
              "|---|---:|---:|---:|---:|" + ("---:|" if hands else "")]
    lines += [
        f"| {row['class']} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | {row['support']} |"
        + (f" {_pct(hands['detection_rate'].get(row['class']))} |" if hands else "")
        for row in report["per_class"]
    ]
    lines += ["", "## Most confused", ""]
    if report["most_confused"]:
        lines += ["| true | predicted | count | share of true |", "|---|---|---:|---:|"]
        lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {p['rate']:.1%} |" for p in report["most_confused"]]
    else:
        lines.append("No confusions: every image was classified correctly.")
    if report.get("skipped_files"):
        lines += ["", "## Skipped files", ""]
        lines += [f"- `{f['path']}`: {f['error']}" for f in report["skipped_files"][:50]]
        if len(report["skipped_files"]) > 50:
            lines.append(f"- ... and {len(report['skipped_files']) - 50} more (see the JSON report)")
    if png_name:
        lines += ["", "## Confusion matrix", "", f"![confusion matrix]({png_name})"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, directory: Path, name: str, title: str) -> dict[str, str]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>_confusion.png``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    png_path = directory / f"{name}_confusion.png"
    plot_confusion(report, png_path, title)
    content = {key: value for key, value in report.items() if key != "files"}
    json_path.write_text(json.dumps(content, indent=2))
    md_path.write_text(report_markdown(report, title, png_path.name))
    logger.info("evaluation report written: %s, %s, %s", json_path, md_path, png_path)
    return {"json": str(json_path), "markdown": str(md_path), "confusion_png": str(png_path)}


def confident_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """The honest "not sure": how right the confident answers are, and how many answers are confident."""
    confident = probabilities.max(axis=1) >= threshold
    right = probabilities.argmax(axis=1) == labels
    return {"confidence_threshold": threshold, "coverage": float(confident.mean()) if len(labels) else float("nan"),
            "confident_accuracy": float(right[confident].mean()) if confident.any() else float("nan")}


def people_of(paths: list[str]) -> np.ndarray | None:
    """Whose image each path is, where every file name says (``data.people.person_in_name``: asl-people's
    ``<person>-<n>.<ext>``), two people or more; else None."""
    named = [person_in_name(path) for path in paths]
    if any(person is None for person in named):
        return None
    people = np.asarray(named)
    return people if len(set(named)) > 1 else None


def calibration_metrics(model_dir: Path, labels: np.ndarray, answers: PathAnswers, paths: list[str], shots: int,
                        draws: int = 5, seed: int = 0) -> dict:
    """``evaluate --calibration-shots K``: K images per letter with a hand found, drawn from each person's
    images (the file names' prefix; else from the whole folder), are that person's calibration; the rest
    of their images are answered with it. Repeated over ``draws`` draws; the mean is reported beside the
    model alone on the same images, with the confident answers' accuracy and coverage, per person too."""
    from asl_platform.model import Predictor
    from asl_platform.model.calibration import Calibration
    from asl_platform.model.confidence import answer_threshold

    predictor = Predictor(model_dir)
    if not predictor.hand_aware:
        raise UserError("--calibration-shots needs a hand-aware model (model.kind=hand_aware)")
    confidence = predictor.card.confidence
    people = people_of(paths)
    groups = people if people is not None else np.zeros(len(paths), dtype=int)
    usable = np.asarray([not e for e in answers.errors], dtype=bool)
    found = answers.found & usable
    runs = []
    for draw in range(draws):
        rng = np.random.default_rng(seed + draw)
        calibrated = np.array(answers.probabilities, copy=True)
        is_calibrated, queried = np.zeros(len(labels), bool), usable.copy()
        per_person = {}
        for group in np.unique(groups):
            members = groups == group
            chosen = []
            for label in np.unique(labels[members & found]):
                candidates = np.flatnonzero(members & found & (labels == label))
                chosen.extend(rng.choice(candidates, min(shots, len(candidates) - 1), replace=False)
                              if len(candidates) > 1 else [])
            queried[chosen] = False
            rest = np.flatnonzero(members & found & queried)
            if chosen and len(rest):
                calibrated[rest] = predictor.predict_calibrated(answers.rows[rest],
                                                                Calibration(answers.rows[chosen], labels[chosen]))
                is_calibrated[rest] = True
            mine = members & queried
            if mine.any():
                per_person[str(group)] = float(np.mean(calibrated[mine].argmax(1) == labels[mine]))
        right = calibrated[queried].argmax(1) == labels[queried]
        base = answers.probabilities[queried].argmax(1) == labels[queried]
        run = {"accuracy": float(right.mean()), "accuracy_uncalibrated": float(base.mean()), "per_person": per_person}
        if confidence is not None:
            confident = calibrated[queried].max(1) >= answer_threshold(confidence.model_dump(), "calibrated")
            run["coverage"] = float(confident.mean())
            run["confident_accuracy"] = float(right[confident].mean()) if confident.any() else float("nan")
        runs.append(run)
    result = {key: float(np.mean([run[key] for run in runs])) for key in runs[0] if key != "per_person"}
    persons = {person: float(np.mean([run["per_person"].get(person, np.nan) for run in runs]))
               for person in runs[0]["per_person"]}
    result.update(shots=shots, draws=draws, calibrated_per="person (file-name prefix)" if people is not None else
                  "the whole folder", images_answered=int(queried.sum()))
    if people is not None:
        result.update(per_person=persons, mean_person=float(np.mean(list(persons.values()))),
                      worst_person=min(persons, key=persons.get), worst_person_accuracy=min(persons.values()))
    return result


def hand_metrics(labels: np.ndarray, probabilities: np.ndarray, found: np.ndarray, classes: list[str]) -> dict:
    """How often a hand was found (overall and per class) and accuracy with and without one."""
    correct = probabilities.argmax(axis=1) == labels

    def share(mask: np.ndarray) -> float | None:
        return float(mask.mean()) if len(mask) else None

    return {
        "hand_found": share(found),
        "accuracy_with_hand": share(correct[found]), "images_with_hand": int(found.sum()),
        "accuracy_without_hand": share(correct[~found]), "images_without_hand": int((~found).sum()),
        "detection_rate": {name: share(found[labels == i]) for i, name in enumerate(classes) if np.any(labels == i)},
    }


# --------------------------------------------------------------------------- folder evaluation


def _default_name(data_root: str, split: str) -> str:
    if split == "test":
        return "test"
    name = Path(str(data_root).rstrip("/")).name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _normalised(path: str) -> str:
    return path.rstrip("/") if is_remote(path) else str(Path(strip_file_scheme(path)).expanduser().resolve())


def _write_predictions(path: Path, paths: list[str], labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> str:
    """One row per evaluated image, so the wrong ones can be looked at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence", "correct"])
        for file, label, probs in zip(paths, labels, probabilities):
            predicted = int(np.argmax(probs))
            writer.writerow([file, classes[label], classes[predicted], f"{probs[predicted]:.4f}", int(predicted == label)])
    return str(path)


def evaluation_images(card: ModelCard, model_dir: Path, roots: list[str],
                      split: str) -> tuple[list[str], np.ndarray, dict[str, int], list[str]]:
    """The images an evaluation scores: every image under ``roots`` (``all``) or the held-out test split
    exactly as training made it (``test``), joined to the model's classes by name. Returns the paths,
    their labels in the model's class order, the images of classes the model does not know (left out,
    by class) and the model's classes without an image (warned about: support 0)."""
    where = ", ".join(roots)
    if split == "test":  # listed and split per folder exactly as training did
        trained = [s.root for s in card.data.sources] if card.data and card.data.sources else \
            [card.data.root] if card.data and card.data.root else []
        if trained and sorted(map(_normalised, roots)) != sorted(map(_normalised, trained)):
            logger.warning("split=test on %s, but the model was trained on %s: the 'test' images are only held out "
                           "if they are the same folders", where, ", ".join(trained))
        listing = training_split(card, model_dir, roots)
        selected = listing.subset("test")
        if not selected.paths:
            raise DataError(f"the test split of {where} is empty")
    else:
        listing = selected = merge_sources([list_images(root) for root in roots])
    paths, labels, unknown = join_classes(selected, card.classes)
    present = {selected.classes[y] for y in selected.labels}
    missing = [c for c in card.classes if c not in present]
    if unknown:
        logger.warning("skipping %d image(s) of class(es) the model does not know: %s", sum(unknown.values()),
                       ", ".join(f"{c} ({n})" for c, n in unknown.items()))
    if missing:
        logger.warning("model class(es) with no images in %s (split %s): %s; they have support 0 and are left out "
                       "of macro F1", where, split, ", ".join(missing))
    if not paths:
        raise DataError(f"no images of the model's classes under {where} (split {split}); "
                        f"folder classes: {', '.join(listing.classes)}; model classes: {', '.join(card.classes)}")
    return paths, labels, unknown, missing


def evaluate_folder(
    model_dir: str | Path,
    data_root: str | list[str],
    split: str = "all",
    output_dir: Path | None = None,
    name: str | None = None,
    use_gpu: bool = False,
    inference: InferenceConfig | None = None,
    calibration_shots: int = 0,
    calibration_draws: int = 5,
) -> dict:
    """Evaluate a model on an image folder (``split="test"``: only the held-out images of training);
    ``use_gpu`` runs each inference actor on a GPU, ``inference`` says which runtime; with
    ``calibration_shots`` also calibrated to each person (``calibration_metrics``).

    Data classes join model classes by name; unknown classes, model classes without images and
    unreadable files are listed in the report rather than dropped quietly.
    """
    from asl_platform.model import model_location, resolve_model_dir

    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}; got {split!r}")
    location = model_location(model_dir)
    model_dir = resolve_model_dir(location)
    card = ModelCard.load(model_dir)
    inference = inference or InferenceConfig()
    runtime, precision = choose_runtime(inference, card, "cuda" if use_gpu else "cpu")  # a bad setting fails now
    classes: list[str] = list(card.classes)
    data_cfg = data_settings(card)
    roots = [str(data_root)] if isinstance(data_root, (str, Path)) else [str(r) for r in data_root]
    data_root = ", ".join(roots)
    paths, labels, unknown, missing_classes = evaluation_images(card, model_dir, roots, split)

    logger.info("evaluating %s on %d image(s) from %s (split %s)", model_dir, len(paths), data_root, split)
    answers = predict_paths_with_hands(location, paths, batch_size=data_cfg["batch_size"],
                                       max_bytes=data_cfg["max_image_bytes"], use_gpu=use_gpu, inference=inference)
    probabilities, errors, found = answers.probabilities, answers.errors, answers.found
    good = np.asarray([not e for e in errors], dtype=bool)
    skipped_files = [{"path": p, "error": e} for p, e in zip(paths, errors) if e]
    (logger.warning if skipped_files else logger.info)(summarize_errors(paths, errors))
    if not good.any():
        raise DataError(f"none of the {len(paths)} image(s) under {data_root} could be read")

    report = compute_report(labels[good], probabilities[good], classes)
    if found is not None:
        report["hands"] = hand_metrics(labels[good], probabilities[good], found[good], classes)
    if card.confidence is not None:
        report.update(confident_metrics(labels[good], probabilities[good], card.confidence.threshold))
    if calibration_shots:
        report["calibration"] = calibration_metrics(model_dir, labels, answers, paths, calibration_shots,
                                                    calibration_draws)
    report.update({
        "model_dir": str(model_dir),
        "model_version": card.version,
        "data_root": str(data_root),
        "split": split,
        "runtime": "torch" if runtime == "torch" else f"onnxruntime {precision}",
        "missing_classes": missing_classes,
        "skipped_classes": unknown,
        "skipped_files": skipped_files,
    })
    logger.info("%s: accuracy %.2f%%, loss %.4f, macro F1 %.4f on %d image(s)%s%s", _default_name(data_root, split),
                100 * report["accuracy"], report["loss"], report["macro_f1"], report["images"],
                f"; hand found in {report['hands']['hand_found']:.1%}" if "hands" in report else "",
                f"; confident answers {report['confident_accuracy']:.2%} right, covering {report['coverage']:.1%}"
                if "coverage" in report else "")
    if "calibration" in report:
        calibration = report["calibration"]
        logger.info("calibrated with %d shot(s) per letter (per %s, mean of %d draws): accuracy %.2f%% (model alone "
                    "%.2f%% on the same images)%s", calibration["shots"], calibration["calibrated_per"],
                    calibration["draws"], 100 * calibration["accuracy"], 100 * calibration["accuracy_uncalibrated"],
                    f"; mean person {calibration['mean_person']:.2%}, worst {calibration['worst_person']} "
                    f"{calibration['worst_person_accuracy']:.2%}" if "mean_person" in calibration else "")
    if output_dir is not None:
        name = name or _default_name(data_root, split)
        title = f"Evaluation of {card.version or model_dir.name} on {Path(str(data_root).rstrip('/')).name or data_root} ({split})"
        files = write_report(report, Path(output_dir), name, title)
        good_paths = [p for p, ok in zip(paths, good) if ok]
        files["predictions"] = _write_predictions(Path(output_dir) / f"{name}_predictions.csv", good_paths,
                                                  labels[good], probabilities[good], classes)
        report["files"] = files
    return report


# --------------------------------------------------------------------------- the pipeline's held-out splits


@dataclass
class SplitAnswers:
    """Both models' answers on the readable images a choice is made on (or a split scored on), hand found
    or not, and what each image counts for when scoring: every held-out person the same (``data.people``),
    or every training folder the same (``data.balance_sources``), else every image. An image model alone
    has no hand found anywhere."""

    image: np.ndarray
    landmarks: np.ndarray
    found: np.ndarray
    labels: np.ndarray
    inputs: np.ndarray  # the landmark rows (zeros where no hand was found)
    sources: np.ndarray  # which training folder each image is from
    weights: np.ndarray | None
    groups: np.ndarray  # whom a simulated calibration calibrates to: the row's held-out group, or its folder
    group_names: list[str]  # what ``groups`` indexes
    landmark_models: list  # the landmark model that answered each group's rows ([] without one)

    def scores(self, classes: list[str]) -> dict[str, float]:
        return score_rules(self.image, self.landmarks, self.found, self.labels, classes, self.weights)

    def answers(self, rule: str, classes: list[str]) -> np.ndarray:
        return fuse(rule, self.image, self.landmarks, self.found, classes)

    def accuracy(self, rule: str, classes: list[str], source: int | None = None) -> float:
        """Plain accuracy under ``rule`` (every image counts once), of one training folder's images or all."""
        keep = np.ones(len(self.labels), bool) if source is None else self.sources == source
        right = self.answers(rule, classes)[keep].argmax(axis=1) == self.labels[keep]
        return float(right.mean()) if len(right) else float("nan")

    def weighted_accuracy(self, rule: str, classes: list[str]) -> float:
        """Accuracy under ``rule`` with each image counting its weight (the mean person, held out)."""
        right = self.answers(rule, classes).argmax(axis=1) == self.labels
        return float(np.average(right, weights=self.weights)) if len(right) else float("nan")


def _answers(prepared: PreparedData, rows: np.ndarray, image_model: nn.Module, landmark_model: nn.Module | None,
             classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both models on the listed files ``rows`` (positions): image probabilities (features or activations),
    landmark probabilities (zeros without a hand or a landmark model), hand found, landmark rows."""
    image = probabilities(image_model, prepared.table.features[rows], len(classes))
    if prepared.hands is None:
        return image, np.zeros_like(image), np.zeros(len(rows), bool), np.zeros((len(rows), INPUT_DIM), np.float32)
    found = prepared.hands.found[rows] & (landmark_model is not None)
    inputs = prepared.hands.inputs(rows)
    return image, landmark_probabilities(landmark_model, inputs, found, len(classes)), found, inputs


def split_answers(prepared: PreparedData, image_model: nn.Module, landmark_model: nn.Module | None,
                  split: str) -> SplitAnswers:
    """The exported models on a split's readable images (the validation split: what is chosen on; the test split)."""
    mask = prepared.rows(split) & (prepared.hands.valid if prepared.hands is not None else True)
    rows = np.flatnonzero(mask)
    image, landmarks, found, inputs = _answers(prepared, rows, image_model, landmark_model, prepared.index.classes)
    sources = np.asarray(prepared.index.sources or [0] * len(prepared.index), dtype=np.int64)[rows]
    folders = [Path(source["root"]).name for source in prepared.sources] or [Path(str(prepared.root)).name]
    return SplitAnswers(image, landmarks, found, np.asarray(prepared.index.labels)[rows], inputs, sources,
                        prepared.weights_of(mask), sources, folders,
                        [landmark_model] * len(folders) if landmark_model is not None else [])


def held_out_answers(prepared: PreparedData, image: TrainingResult, landmarks: TrainingResult | None) -> SplitAnswers:
    """Choosing on held-out people (``data.people``): every training image a fold scores, answered by that
    fold's models (trained without its group, at the epoch the retrain chose): what the fusion rule, the
    "not sure" threshold and the calibration temperature are chosen on, each group weighing the same."""
    classes = prepared.index.classes
    feature_rows = np.flatnonzero(prepared.rows("train"))  # what the image model's folds index
    parts = []
    for number, name in enumerate(image.folds.names):
        rows = feature_rows[image.folds.val[number]]
        if prepared.hands is not None:
            rows = rows[prepared.hands.valid[rows]]
        landmark_model = None
        if landmarks is not None and name in landmarks.folds.names:
            landmark_model = landmarks.held_out[landmarks.folds.names.index(name)]
        parts.append((rows, number, landmark_model, _answers(prepared, rows, image.held_out[number], landmark_model,
                                                             classes)))
    rows = np.concatenate([part[0] for part in parts])
    mask = np.zeros(len(prepared.index), bool)
    mask[rows] = True
    order = np.argsort(rows)  # the rows in listing order, as ``people_weights`` counts them
    column = [np.concatenate([part[3][i] for part in parts])[order] for i in range(4)]
    groups = np.concatenate([np.full(len(part[0]), part[1]) for part in parts])[order]
    rows = rows[order]
    sources = np.asarray(prepared.index.sources or [0] * len(prepared.index), dtype=np.int64)[rows]
    return SplitAnswers(column[0], column[1], column[2], np.asarray(prepared.index.labels)[rows], column[3], sources,
                        prepared.people_weights(mask), groups, list(image.folds.names), [part[2] for part in parts])


def evaluate_held_out(retrained, prepared: PreparedData, kind: str) -> tuple[dict, dict[str, SplitAnswers]]:
    """Stage evaluate of the pipeline: the image model on the held-out test split's cached arrays, and
    the models' answers that export chooses on (the fusion rule, the "not sure" threshold: each fold's
    models on their held-out people, ``held_out_answers``, or the validation split) and scores (the test
    split)."""
    trained, landmarks = retrained.image, retrained.landmarks
    test = (prepared.activations if kind == "activations" else prepared.features)("test")
    scored = evaluate(trained.model, ArrayBatches(*test, evaluation_batch_size(test[0]), torch.device("cpu")).batches(0))
    metrics = {
        "test_accuracy": scored["accuracy"], "test_loss": scored["loss"], "test_images": int(len(test[1])),
        "val_accuracy": trained.best_metrics["val_accuracy"], "val_loss": trained.best_metrics["val_loss"],
        "best_epoch": trained.best_metrics["epoch"], "epochs_run": len(trained.history),
        "skipped_files": prepared.skipped,
    }
    landmark_model = landmarks.model if landmarks is not None else None
    answers = {"val": held_out_answers(prepared, trained, landmarks) if prepared.people else
               split_answers(prepared, trained.model, landmark_model, "val"),
               "test": split_answers(prepared, trained.model, landmark_model, "test")}
    return metrics, answers
