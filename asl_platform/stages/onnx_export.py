"""The ONNX files of an exported model version, and the check that decides which may be used.

Every export writes ``model.onnx`` and ``model.int8.onnx`` (calibrated on training images), runs
torch, fp32 and int8 on the same decoded images of the held-out test split and of the cross-domain
folder, and records accuracy and top-1 agreement with torch in the card (``OnnxCard``). int8 is used
only where its accuracy is within ``inference.int8_max_accuracy_drop`` of fp32's on every set scored;
otherwise the card says why not, with the numbers.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np

from asl_platform.config import InferenceConfig
from asl_platform.data.decode import Preprocessing, normalize_batch, resize_for_model
from asl_platform.data.listing import ImageIndex, join_classes
from asl_platform.data.reading import image_dataset, in_path_order, load_image, map_with_actors
from asl_platform.limits import MAX_IMAGE_BYTES
from asl_platform.model.card import ModelCard, OnnxCard, RuntimeScores
from asl_platform.model.onnx import FP32_FILE, INT8_FILE, OPSET, onnxruntime_version, quantize_int8, to_onnx
from asl_platform.runtime import init_ray

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "fp32", "int8")


def calibration_batch(paths: list[str], prep: Preprocessing, count: int, seed: int, max_bytes: int) -> np.ndarray:
    """Up to ``count`` training images (a seeded sample, unreadable ones left out), preprocessed
    exactly as the model sees them."""
    chosen = random.Random(seed).sample(list(paths), min(count, len(paths)))
    images = []
    for path in chosen:
        try:
            images.append(resize_for_model(load_image(path, max_bytes, draft_size=prep.image_size), prep))
        except (OSError, ValueError):
            continue
    if not images:
        raise ValueError("no readable training image to calibrate int8 on")
    return normalize_batch(np.stack(images), prep)


class _RuntimeComparer:
    """Ray Data callable class: both ONNX files (and the torch model, where the caller has not got its
    answers already) on the same decoded batch. Column 0 of ``top1`` is torch's, -1 when not run."""

    def __init__(self, model_dir: str, threads: int | None = None, with_torch: bool = True):
        from asl_platform.model import load_model_dir
        from asl_platform.model.onnx import OnnxImageModel

        self.model = load_model_dir(model_dir)[0].eval() if with_torch else None
        self.fp32 = OnnxImageModel(Path(model_dir) / FP32_FILE, threads)
        self.int8 = OnnxImageModel(Path(model_dir) / INT8_FILE, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        images = np.ascontiguousarray(batch["image"])
        reference = np.full(len(images), -1)
        if self.model is not None:
            with torch.inference_mode():
                reference = self.model(torch.from_numpy(images)).numpy().argmax(1)
        top1 = np.stack([reference, self.fp32(images).argmax(1), self.int8(images).argmax(1)], axis=1)
        return {"path": np.asarray(batch["path"]).astype(str), "error": np.asarray(batch["error"]).astype(str),
                "top1": top1.astype(np.int64)}


def compare_runtimes(model_dir: Path, prep: Preprocessing, paths: list[str], batch_size: int, max_bytes: int,
                     threads: int | None = None, with_torch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 of torch (-1 without ``with_torch``), fp32 and int8 (N, 3) on ``paths`` (decoded once, by
    Ray Data actors), and which paths were readable."""
    import ray

    init_ray(worker_logs=False)
    unique = list(dict.fromkeys(paths))
    concurrency = max(1, min(int(ray.cluster_resources().get("CPU", 1)), math.ceil(len(unique) / batch_size)))
    columns = map_with_actors(image_dataset(ImageIndex.of_paths(unique), prep, batch_size=batch_size, max_bytes=max_bytes),
                              _RuntimeComparer, {"model_dir": str(model_dir), "threads": threads, "with_torch": with_torch},
                              batch_size, concurrency)
    ordered = in_path_order(columns, list(paths))
    return ordered["top1"], np.asarray([not str(error) for error in ordered["error"]], dtype=bool)


def runtime_scores(top1: np.ndarray, labels: np.ndarray) -> RuntimeScores:
    """Accuracy of each runtime and agreement of each ONNX file with torch, from ``compare_runtimes``."""
    if not len(labels):
        nan = float("nan")
        return RuntimeScores(images=0, torch_accuracy=nan, fp32_accuracy=nan, fp32_agreement=nan,
                             int8_accuracy=nan, int8_agreement=nan)
    right = top1 == np.asarray(labels)[:, None]
    return RuntimeScores(
        images=int(len(labels)), torch_accuracy=float(right[:, 0].mean()),
        fp32_accuracy=float(right[:, 1].mean()), fp32_agreement=float(np.mean(top1[:, 1] == top1[:, 0])),
        int8_accuracy=float(right[:, 2].mean()), int8_agreement=float(np.mean(top1[:, 2] == top1[:, 0])),
    )


def int8_verdict(scores: dict[str, RuntimeScores], max_drop: float) -> tuple[bool, str]:
    """int8 is usable when, on every set scored (with images), its accuracy is at most ``max_drop``
    below fp32's; the reason names the numbers either way."""
    scored = {name: s for name, s in scores.items() if s.images}
    if not scored:
        return False, "no labelled image to check int8 on (empty test split, no cross-domain folder): fp32 is used"
    drops = {name: s.fp32_accuracy - s.int8_accuracy for name, s in scored.items()}
    described = ", ".join(f"{name} {scored[name].int8_accuracy:.2%} vs fp32 {scored[name].fp32_accuracy:.2%}"
                          for name in scored)
    worst = max(drops, key=drops.get)
    if drops[worst] > max_drop + 1e-9:
        return False, (f"int8 loses {100 * drops[worst]:.2f} points of accuracy on {worst} (limit "
                       f"{100 * max_drop:.2f}; {described}): fp32 is used")
    return True, f"int8 is within {100 * max_drop:.2f} points of fp32 on {', '.join(scored)} ({described})"


def export_onnx(model_dir: Path, model, card: ModelCard, calibration_paths: list[str],
                sets: dict[str, tuple[list[str], np.ndarray, np.ndarray | None]], inference: InferenceConfig,
                batch_size: int = 64, max_bytes: int = MAX_IMAGE_BYTES, seed: int = 0) -> OnnxCard:
    """Write both ONNX files into ``model_dir``, score them on ``sets`` (name -> paths, labels, and torch's
    top-1 where the caller has it, else None: torch is run too) against torch, and return the card entry
    (the caller saves the card)."""
    prep = card.prep
    to_onnx(model, prep.image_size, model_dir / FP32_FILE)
    calibration = calibration_batch(calibration_paths, prep, inference.calibration_images, seed, max_bytes)
    logger.info("int8: calibrating on %d training images", len(calibration))
    quantize_int8(model_dir / FP32_FILE, calibration, model_dir / INT8_FILE)
    scores: dict[str, RuntimeScores] = {}
    for name, (paths, labels, torch_top1) in sets.items():
        if not paths:
            continue
        top1, readable = compare_runtimes(model_dir, prep, paths, batch_size, max_bytes, inference.threads,
                                          with_torch=torch_top1 is None)
        if torch_top1 is not None:
            top1[:, 0] = torch_top1
        scores[name] = runtime_scores(top1[readable], labels[readable])
    usable, verdict = int8_verdict(scores, inference.int8_max_accuracy_drop)
    for name, s in scores.items():
        logger.info("ONNX on %s (%d images): accuracy torch %.2f%%, fp32 %.2f%% (agreement %.2f%%), int8 %.2f%% "
                    "(agreement %.2f%%)", name, s.images, 100 * s.torch_accuracy, 100 * s.fp32_accuracy,
                    100 * s.fp32_agreement, 100 * s.int8_accuracy, 100 * s.int8_agreement)
    logger.info("int8 %s: %s", "used" if usable else "not used", verdict)
    return OnnxCard(opset=OPSET, onnxruntime=onnxruntime_version(), fp32_file=FP32_FILE, int8_file=INT8_FILE,
                    calibration_images=len(calibration), scores=scores, int8_usable=usable, int8_verdict=verdict)


def add_onnx(model_dir: str | Path, cross_domain_root: str | None = None,
             inference: InferenceConfig | None = None) -> OnnxCard:
    """``asl-platform export-onnx``: the ONNX files and their check for a local model folder exported
    before ONNX export existed (or again, e.g. with another calibration size). Calibrated on the
    training split and scored on the held-out test split, both as training made them (the seeded
    split of the card's data; the saved test file list where there is one), and on
    ``cross_domain_root`` when given."""
    from asl_platform.data.listing import list_images
    from asl_platform.data.storage import is_remote
    from asl_platform.errors import UserError
    from asl_platform.model import load_model_dir, resolve_model_dir, write_readme
    from asl_platform.stages.ingest import data_settings, training_split

    if is_remote(str(model_dir)):
        raise UserError(f"{model_dir}: export-onnx writes into the model folder; fetch it to a local folder first")
    directory = resolve_model_dir(model_dir)
    model, card = load_model_dir(directory)
    data = card.data
    roots = [s.root for s in data.sources] if data and data.sources else [data.root] if data and data.root else []
    if not roots or (data and data.smoke_set):
        raise UserError(f"{directory}: its card names no training folder to calibrate int8 on")
    settings = data_settings(card)
    listing = training_split(card, directory, roots)
    sets = {"test": (*join_classes(listing.subset("test"), card.classes)[:2], None)}
    if cross_domain_root:
        sets["cross_domain"] = (*join_classes(list_images(cross_domain_root), card.classes)[:2], None)
    card.onnx = export_onnx(directory, model, card, listing.subset("train").paths, sets, inference or InferenceConfig(),
                            batch_size=settings["batch_size"], max_bytes=settings["max_image_bytes"], seed=settings["seed"])
    card.save(directory)
    write_readme(directory, card)
    return card.onnx
