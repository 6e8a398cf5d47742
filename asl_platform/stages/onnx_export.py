"""The ONNX files of an exported model version, and the check that decides which may be used.

Every export writes ``model.onnx`` and ``model.int8.onnx`` (its ranges measured on training images) and runs them
on the same decoded images of the held-out test split and of the cross-domain folder, against torch's
answers (which the pipeline already has from the cached features; other commands run torch beside
them). int8, which rounds, runs on every image; fp32, which computes what torch does (its agreement is
exact or an export bug), on a seeded sample of ``inference.fp32_check_images`` per set. Accuracy and
top-1 agreement with torch go into the card (``OnnxCard``). int8 is used only where its accuracy is within
``inference.int8_max_accuracy_drop`` of the model's own (torch's) on every set scored; otherwise the card
says why not, with the numbers.
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


def quantization_batch(paths: list[str], prep: Preprocessing, count: int, seed: int, max_bytes: int) -> np.ndarray:
    """Up to ``count`` training images (a seeded sample, unreadable ones left out), preprocessed
    exactly as the model sees them: what int8's activation ranges are measured on."""
    chosen = random.Random(seed).sample(list(paths), min(count, len(paths)))
    images = []
    for path in chosen:
        try:
            images.append(resize_for_model(load_image(path, max_bytes, draft_size=prep.image_size), prep))
        except (OSError, ValueError):
            continue
    if not images:
        raise ValueError("no readable training image to measure int8's ranges on")
    return normalize_batch(np.stack(images), prep)


class _RuntimeComparer:
    """Ray Data callable class: int8 on every image of the decoded batch, fp32 on those of ``fp32_paths``
    (None: all), and the torch model where the caller has not got its answers already. ``top1`` columns:
    torch, fp32, int8; -1 where that runtime did not run."""

    def __init__(self, model_dir: str, threads: int | None = None, with_torch: bool = True,
                 fp32_paths: list[str] | None = None):
        from asl_platform.model import load_model_dir
        from asl_platform.model.onnx import OnnxImageModel

        self.model = load_model_dir(model_dir)[0].eval() if with_torch else None
        self.fp32 = OnnxImageModel(Path(model_dir) / FP32_FILE, threads)
        self.int8 = OnnxImageModel(Path(model_dir) / INT8_FILE, threads)
        self.fp32_paths = None if fp32_paths is None else set(fp32_paths)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        images, paths = np.ascontiguousarray(batch["image"]), np.asarray(batch["path"]).astype(str)
        top1 = np.full((len(images), 3), -1, dtype=np.int64)
        if self.model is not None:
            with torch.inference_mode():
                top1[:, 0] = self.model(torch.from_numpy(images)).numpy().argmax(1)
        rows = np.arange(len(images)) if self.fp32_paths is None else \
            np.flatnonzero([path in self.fp32_paths for path in paths])
        if len(rows):
            top1[rows, 1] = self.fp32(images[rows]).argmax(1)
        top1[:, 2] = self.int8(images).argmax(1)
        return {"path": paths, "error": np.asarray(batch["error"]).astype(str), "top1": top1}


def compare_runtimes(model_dir: Path, prep: Preprocessing, paths: list[str], batch_size: int, max_bytes: int,
                     threads: int | None = None, with_torch: bool = True,
                     fp32_paths: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 of torch (-1 without ``with_torch``), fp32 (-1 outside ``fp32_paths``, None: everywhere) and
    int8 (N, 3) on ``paths`` (decoded once, by Ray Data actors), and which paths were readable."""
    import ray

    init_ray(worker_logs=False)
    unique = list(dict.fromkeys(paths))
    concurrency = max(1, min(int(ray.cluster_resources().get("CPU", 1)), math.ceil(len(unique) / batch_size)))
    columns = map_with_actors(image_dataset(ImageIndex.of_paths(unique), prep, batch_size=batch_size, max_bytes=max_bytes),
                              _RuntimeComparer, {"model_dir": str(model_dir), "threads": threads, "with_torch": with_torch,
                                                 "fp32_paths": fp32_paths}, batch_size, concurrency)
    ordered = in_path_order(columns, list(paths))
    return ordered["top1"], np.asarray([not str(error) for error in ordered["error"]], dtype=bool)


def fp32_sample(paths: list[str], count: int, seed: int) -> list[str]:
    """The seeded sample of a set's images that fp32 is checked on (all of them when there are fewer)."""
    unique = list(dict.fromkeys(paths))
    return unique if len(unique) <= count else random.Random(seed).sample(unique, count)


def runtime_scores(top1: np.ndarray, labels: np.ndarray) -> RuntimeScores:
    """Accuracy of each runtime and agreement of each ONNX file with torch, from ``compare_runtimes``:
    torch and int8 over every image, fp32 over the images it ran on."""
    nan = float("nan")
    if not len(labels):
        return RuntimeScores(images=0, torch_accuracy=nan, fp32_accuracy=nan, fp32_agreement=nan,
                             int8_accuracy=nan, int8_agreement=nan, fp32_images=0)
    right = top1 == np.asarray(labels)[:, None]
    fp32 = top1[:, 1] >= 0
    return RuntimeScores(
        images=int(len(labels)), torch_accuracy=float(right[:, 0].mean()),
        fp32_accuracy=float(right[fp32, 1].mean()) if fp32.any() else nan,
        fp32_agreement=float(np.mean(top1[fp32, 1] == top1[fp32, 0])) if fp32.any() else nan,
        fp32_images=int(fp32.sum()),
        int8_accuracy=float(right[:, 2].mean()), int8_agreement=float(np.mean(top1[:, 2] == top1[:, 0])),
    )


def int8_verdict(scores: dict[str, RuntimeScores], max_drop: float) -> tuple[bool, str]:
    """int8 is usable when, on every set scored (with images), its accuracy is at most ``max_drop``
    below the model's own (torch's, on the same images); the reason names the numbers either way."""
    scored = {name: s for name, s in scores.items() if s.images}
    if not scored:
        return False, "no labelled image to check int8 on (empty test split, no cross-domain folder): fp32 is used"
    drops = {name: s.torch_accuracy - s.int8_accuracy for name, s in scored.items()}
    described = ", ".join(f"{name} {scored[name].int8_accuracy:.2%} vs the model's {scored[name].torch_accuracy:.2%}"
                          for name in scored)
    worst = max(drops, key=drops.get)
    if drops[worst] > max_drop + 1e-9:
        return False, (f"int8 loses {100 * drops[worst]:.2f} points of accuracy on {worst} (limit "
                       f"{100 * max_drop:.2f}; {described}): fp32 is used")
    return True, f"int8 is within {100 * max_drop:.2f} points of the model's accuracy on {', '.join(scored)} ({described})"


def export_onnx(model_dir: Path, model, card: ModelCard, quantization_paths: list[str],
                sets: dict[str, tuple[list[str], np.ndarray, np.ndarray | None]], inference: InferenceConfig,
                batch_size: int = 64, max_bytes: int = MAX_IMAGE_BYTES, seed: int = 0) -> OnnxCard:
    """Write both ONNX files into ``model_dir``, score them on ``sets`` (name -> paths, labels, and torch's
    top-1 where the caller has it, else None: torch is run too) against torch, and return the card entry
    (the caller saves the card)."""
    prep = card.prep
    to_onnx(model, prep.image_size, model_dir / FP32_FILE)
    ranges = quantization_batch(quantization_paths, prep, inference.quantization_images, seed, max_bytes)
    logger.info("int8: measuring its ranges on %d training images", len(ranges))
    quantize_int8(model_dir / FP32_FILE, ranges, model_dir / INT8_FILE)
    sets = {name: value for name, value in sets.items() if value[0]}
    scores: dict[str, RuntimeScores] = {}
    if sets:  # every set in one pass over its images: one pool of actors, each file decoded once
        paths = [path for set_paths, _, _ in sets.values() for path in set_paths]
        sampled = [path for set_paths, _, _ in sets.values()
                   for path in fp32_sample(set_paths, inference.fp32_check_images, seed)]
        top1, readable = compare_runtimes(model_dir, prep, paths, batch_size, max_bytes, inference.threads,
                                          with_torch=any(torch_top1 is None for _, _, torch_top1 in sets.values()),
                                          fp32_paths=sampled)
        start = 0
        for name, (set_paths, labels, torch_top1) in sets.items():
            rows = slice(start, start + len(set_paths))
            start += len(set_paths)
            if torch_top1 is not None:
                top1[rows, 0] = torch_top1
            scores[name] = runtime_scores(top1[rows][readable[rows]], labels[readable[rows]])
    usable, verdict = int8_verdict(scores, inference.int8_max_accuracy_drop)
    for name, s in scores.items():
        logger.info("ONNX on %s (%d images): accuracy torch %.2f%%, int8 %.2f%% (agreement %.2f%%); fp32 on %d of "
                    "them: agreement %.2f%%", name, s.images, 100 * s.torch_accuracy, 100 * s.int8_accuracy,
                    100 * s.int8_agreement, s.fp32_images, 100 * s.fp32_agreement)
        if s.fp32_agreement < 1.0:
            logger.warning("fp32 ONNX differs from torch on %.2f%% of %d %s images: the export is not exact",
                           100 * (1 - s.fp32_agreement), s.fp32_images, name)
    logger.info("int8 %s: %s", "used" if usable else "not used", verdict)
    return OnnxCard(opset=OPSET, onnxruntime=onnxruntime_version(), fp32_file=FP32_FILE, int8_file=INT8_FILE,
                    quantization_images=len(ranges), scores=scores, int8_usable=usable, int8_verdict=verdict)


def add_onnx(model_dir: str | Path, cross_domain_root: str | None = None,
             inference: InferenceConfig | None = None) -> OnnxCard:
    """``asl-platform export-onnx``: the ONNX files and their check for a local model folder exported
    before ONNX export existed (or again, e.g. with another number of quantization images). int8's ranges come from the
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
        raise UserError(f"{directory}: its card names no training folder to measure int8's ranges on")
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
