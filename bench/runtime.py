"""Inference runtime benchmark: torch eager vs ONNX Runtime fp32 and int8, in one run (ratios only
mean something within a run on these noisy machines).

1. Model forward, ms per image: batch 1 and 8 at 1 thread, batch 1 at all cores, for the image model
   of an exported model folder (its ``model.onnx`` / ``model.int8.onnx``), through ``Predictor``
   (normalisation included), as serving and batch inference run it.
2. Accuracy of the three on images of a folder (default: 300 asl-alphabet images), and top-1 agreement
   with torch; and the export's own check as recorded in the model card.
3. The feature extraction stage of ``asl-platform pipeline`` (Ray Data, one actor per core) on N
   asl-alphabet images with ``inference.runtime`` torch and onnxruntime, no cache.
4. With a hand-aware model, MediaPipe detection per image, for the whole served cost.

Targets (issue 14): forward >= 2.5x (fp32) and >= 5x (int8) faster than torch at batch 1, 1 thread;
extraction >= 3x; accuracy within 0.5 points. Run from the repository root::

    python bench/runtime.py --model asl_runs/models/<run> [--images 300] [--extract 1200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench.runtime")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "asl-alphabet"
RUNTIMES = {"torch": {"runtime": "torch"}, "onnxruntime fp32": {"precision": "fp32"}, "onnxruntime int8": {"precision": "int8"}}


def predictors(model_dir: str, threads: int) -> dict:
    import torch

    from asl_platform.config import ConfigError, InferenceConfig
    from asl_platform.model import Predictor
    from asl_platform.model.onnx import INT8_FILE, OnnxImageModel

    torch.set_num_threads(threads)
    found = {}
    for name, keys in RUNTIMES.items():
        try:
            found[name] = Predictor(model_dir, inference=InferenceConfig(threads=threads, **keys))
        except ConfigError as exc:  # int8 refused for serving this model: still measured here, and said so
            logger.warning("%s (measured anyway, from its file): %s", name, exc)
            predictor = Predictor(model_dir, inference=InferenceConfig(threads=threads, precision="fp32"))
            predictor.onnx = OnnxImageModel(Path(model_dir) / INT8_FILE, threads)
            found[name] = predictor
    return found


def forward_ms(predictor, batch: int, repeats: int = 40) -> float:
    size = predictor.preprocessing.image_size
    array = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for _ in range(5):
        predictor.predict_uint8(array)
    times = []
    for _ in range(max(8, repeats // batch)):
        started = time.perf_counter()
        predictor.predict_uint8(array)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / batch


def forward_table(model_dir: str) -> list[dict]:
    rows = []
    cores = os.cpu_count() or 1
    for threads, batch in ((1, 1), (1, 8), (cores, 1)):
        for name, predictor in predictors(model_dir, threads).items():
            rows.append({"runtime": name, "threads": threads, "batch": batch, "ms": round(forward_ms(predictor, batch), 2)})
            logger.info("%s", rows[-1])
    return rows


def accuracy(model_dir: str, root: Path, count: int) -> dict:
    from asl_platform.data.listing import list_images
    from asl_platform.data.reading import load_image

    index = list_images(str(root))
    held_out = Path(model_dir) / "test_split.txt"  # the model's own test images, never trained on, where known
    keep = {os.path.abspath(p) for p in held_out.read_text().split()} if held_out.is_file() else None
    candidates = [i for i, p in enumerate(index.paths) if keep is None or os.path.abspath(p) in keep] or list(range(len(index.paths)))
    chosen = random.Random(0).sample(candidates, min(count, len(candidates)))
    runs = predictors(model_dir, os.cpu_count() or 1)
    classes = next(iter(runs.values())).classes
    images = [load_image(index.paths[i]) for i in chosen]
    labels = np.asarray([classes.index(index.classes[index.labels[i]]) for i in chosen])
    top1 = {name: predictor.predict_with_hands(images)[0].argmax(1) for name, predictor in runs.items()}
    return {name: {"accuracy": float(np.mean(answer == labels)), "agreement_with_torch": float(np.mean(answer == top1["torch"]))}
            for name, answer in top1.items()} | {"images": len(images)}


def extraction(root: Path, count: int, backbone: str) -> dict:
    import ray

    from asl_platform.config import InferenceConfig
    from asl_platform.data.listing import list_images
    from asl_platform.stages.features import extract_features

    index = list_images(str(root), max_per_class=max(1, count // 29))
    ray.init(include_dashboard=False, log_to_driver=False)
    figures = {"images": len(index.paths)}
    with tempfile.TemporaryDirectory() as cache:
        for runtime in ("torch", "onnxruntime"):
            started = time.perf_counter()
            table = extract_features(index, backbone, "imagenet", Path(cache) / runtime,
                                     inference=InferenceConfig(runtime=runtime))
            seconds = time.perf_counter() - started
            figures[runtime] = {"seconds": round(seconds, 1), "images_per_s": round(len(table.paths) / seconds, 1)}
            figures.setdefault("features", {})[runtime] = table.features
            logger.info("extraction %s: %s", runtime, figures[runtime])
    features = figures.pop("features")
    figures["max_abs_diff"] = float(np.abs(features["torch"] - features["onnxruntime"]).max())
    ray.shutdown()
    return figures


def hands_ms(model_dir: str, root: Path, count: int = 30) -> float | None:
    from asl_platform.data.listing import list_images
    from asl_platform.data.reading import load_image
    from asl_platform.model import Predictor

    predictor = Predictor(model_dir)
    if not predictor.hand_aware:
        return None
    index = list_images(str(root))
    images = [np.asarray(load_image(p)) for p in random.Random(1).sample(index.paths, count)]
    predictor.detect(images[:2])
    started = time.perf_counter()
    predictor.detect(images)
    return round(1000 * (time.perf_counter() - started) / count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported model folder (or a models folder: its latest)")
    parser.add_argument("--data", default=str(DATA), help="images for accuracy and extraction (default asl-alphabet)")
    parser.add_argument("--images", type=int, default=300, help="images for the accuracy check")
    parser.add_argument("--extract", type=int, default=1200, help="images for the extraction stage (0 skips it)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from asl_platform.model import ModelCard, resolve_model_dir

    model_dir = str(resolve_model_dir(args.model).resolve())
    card = ModelCard.load(model_dir)
    figures: dict = {"model": model_dir, "cpus": os.cpu_count(), "forward": forward_table(model_dir)}
    figures["accuracy"] = accuracy(model_dir, Path(args.data), args.images)
    figures["export_check"] = card.onnx.model_dump() if card.onnx else None
    figures["hands_ms"] = hands_ms(model_dir, Path(args.data))
    if args.extract:
        figures["extraction"] = extraction(Path(args.data), args.extract, card.backbone)
    print_report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def print_report(figures: dict) -> None:
    print(f"\n{figures['model']} on {figures['cpus']} CPUs\n\nmodel forward, ms per image:\n")
    print("| runtime | batch 1, 1 thread | batch 8, 1 thread | batch 1, all cores | speed-up (batch 1, 1 thread) |")
    print("|---|---|---|---|---|")
    cell = {(r["runtime"], r["threads"], r["batch"]): r["ms"] for r in figures["forward"]}
    cores = figures["cpus"]
    base = cell.get(("torch", 1, 1))
    for name in RUNTIMES:
        if (name, 1, 1) in cell:
            print(f"| {name} | {cell[(name, 1, 1)]} | {cell.get((name, 1, 8))} | {cell.get((name, cores, 1))} | "
                  f"{base / cell[(name, 1, 1)]:.2f}x |")
    acc = figures["accuracy"]
    print(f"\naccuracy on {acc['images']} images (of the model's test split where it lists one): " + ", ".join(
        f"{name} {v['accuracy']:.2%} (agrees with torch on {v['agreement_with_torch']:.2%})"
        for name, v in acc.items() if name != "images"))
    check = figures.get("export_check")
    if check:
        print(f"export check: int8 {'used' if check['int8_usable'] else 'not used'}: {check['int8_verdict']}")
    if figures.get("hands_ms") is not None:
        print(f"hand detection (MediaPipe, 1 thread): {figures['hands_ms']} ms per image")
    ex = figures.get("extraction")
    if ex:
        print(f"\nfeature extraction, {ex['images']} images: torch {ex['torch']['images_per_s']} images/s, "
              f"ONNX Runtime {ex['onnxruntime']['images_per_s']} images/s = "
              f"{ex['onnxruntime']['images_per_s'] / ex['torch']['images_per_s']:.2f}x (target >= 3); "
              f"max |diff| {ex['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
