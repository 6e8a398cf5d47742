"""Ingest and feature-extraction throughput: Ray Data against a plain torchvision DataLoader.

Measures, on the same list of images and in the same process:

1. Ray Data decode + preprocess (``asl_platform.data.image_dataset``) in images/s;
2. the torchvision baseline (``ImageFolder`` + ``DataLoader``) doing the same work;
3. their ratio, against the target of at least 0.8x;
4. in-process feature extraction for every registered backbone (random input, no decoding),
   and optionally the full ``extract_features`` Ray pipeline for efficientnet_lite0.

This is a benchmark, not a test: it prints figures, never pass/fail, and exits 0 whatever they are.

Full run (from the repository root, a few minutes on 2 CPUs)::

    python bench/ingest.py --json bench-ingest.json

Quick check::

    python bench/ingest.py --limit-per-class 10 --feature-batches 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asl_platform.data.decode import Preprocessing, to_rgb
from asl_platform.data.listing import ImageIndex, list_images
from asl_platform.data.reading import image_dataset
from asl_platform.errors import DataError
from asl_platform.model import BACKBONES, get_backbone_spec

logger = logging.getLogger("bench.ingest")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "asl-alphabet"  # ../shared/data/asl-alphabet
INGEST_BACKBONE = "efficientnet_lite0"
TARGET_RATIO = 0.8
# ImageNet weights for resnet50 need a download (not possible offline); throughput does not depend
# on the weight values, so random weights measure the same thing.
BENCH_WEIGHTS = {"resnet50": "none", "efficientnet_lite0": "imagenet", "tiny": "none"}


@dataclass
class Measurement:
    """``images`` processed in ``seconds`` of wall-clock time."""

    images: int
    seconds: float
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Ray Data vs DataLoader ingest benchmark", add_help=add_help)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="image folder, <root>/<CLASS>/<image> (default: ../shared/data/asl-alphabet "
                             "relative to the repository root)")
    parser.add_argument("--limit-per-class", type=int, default=None,
                        help="use at most this many images per class, for both pipelines (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of both pipelines and of the backbones")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers (baseline)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed passes of each ingest pipeline, run alternately; the best is reported")
    parser.add_argument("--feature-batches", type=int, default=3, help="timed batches per backbone (after 1 warm-up)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES),
                        help="backbones to time (default: all in the registry)")
    parser.add_argument("--pipeline-features", action="store_true",
                        help=f"also time asl_platform.stages.features.extract_features ({INGEST_BACKBONE}) on the dataset "
                             "(slow: several minutes for the full dataset on 2 CPUs)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON to PATH")
    return parser


# --------------------------------------------------------------------------- helpers


def machine_info() -> dict:
    """What the figures depend on: CPUs, load, library versions."""
    import PIL
    import ray
    import torchvision

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu_model)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "pillow": PIL.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def subset(index: ImageIndex, count: int) -> ImageIndex:
    """The first ``count`` files of ``index`` (for warm-up passes)."""
    return dataclasses.replace(index, paths=index.paths[:count], labels=index.labels[:count], splits=[])


def warm_page_cache(paths: list[str]) -> int:
    """Read every file once so that neither pipeline pays for the first (cold) disk read."""
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


# --------------------------------------------------------------------------- Ray Data


def init_ray() -> None:
    """A local Ray instance with all CPUs, quiet (no dashboard, worker logs, progress bars)."""
    import ray
    import ray.data

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def run_ray_ingest(index: ImageIndex, prep: Preprocessing, batch_size: int) -> Measurement:
    """Iterate every preprocessed batch of ``image_dataset``; time from iteration start to end."""
    dataset = image_dataset(index, prep, batch_size)
    images = errors = 0
    started = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        images += len(batch["path"])
        errors += int(np.count_nonzero(batch["error"] != ""))
    return Measurement(images, time.perf_counter() - started, errors)


# --------------------------------------------------------------------------- torchvision baseline


def _convert_rgb(image):
    """Module-level (picklable) RGB conversion, the same function the Ray path uses."""
    return to_rgb(image)


def build_dataloader(index: ImageIndex, prep: Preprocessing, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """ImageFolder restricted to exactly the files of ``index``, with transforms doing the Ray path's work."""
    from torchvision import datasets, transforms

    if index.layout.startswith("flat"):
        raise DataError(f"the torchvision baseline needs <root>/<CLASS>/ folders; {index.root} is a {index.layout}")
    class_root = os.path.commonpath([os.path.dirname(p) for p in index.paths])
    transform = transforms.Compose([
        transforms.Lambda(_convert_rgb),
        transforms.Resize((prep.image_size, prep.image_size), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    wanted = set(index.paths)
    dataset = datasets.ImageFolder(class_root, transform=transform, is_valid_file=wanted.__contains__)
    if dataset.classes != index.classes or len(dataset) != len(index) or {p for p, _ in dataset.samples} != wanted:
        raise DataError(
            f"ImageFolder({class_root}) found {len(dataset)} files in {len(dataset.classes)} classes, "
            f"but the index has {len(index)} in {len(index.classes)}; the baseline would not be comparable"
        )
    # persistent_workers: the warm-up batch starts the worker processes, the timed passes reuse them
    # (the Ray side likewise reuses the worker processes started by its warm-up pass).
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=workers > 0
    )


def warm_up_dataloader(loader: torch.utils.data.DataLoader) -> None:
    """Fetch one batch, which starts the worker processes; not timed."""
    next(iter(loader))


def run_dataloader(loader: torch.utils.data.DataLoader) -> Measurement:
    """Iterate every batch; time from iteration start to end."""
    images = 0
    started = time.perf_counter()
    for batch_images, _ in loader:
        images += batch_images.shape[0]
    return Measurement(images, time.perf_counter() - started)


# --------------------------------------------------------------------------- feature extraction


def time_backbone(name: str, weights: str, batch_size: int, batches: int) -> Measurement:
    """In-process ``FeatureExtractor`` on random input shaped like the backbone's preprocessing."""
    from asl_platform.stages.features import FeatureExtractor

    size = get_backbone_spec(name).preprocessing.image_size
    extractor = FeatureExtractor(name, weights)
    images = np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)
    extractor({"image": images})  # warm-up (oneDNN kernel selection, allocator)
    started = time.perf_counter()
    for _ in range(batches):
        out = extractor({"image": images})
    seconds = time.perf_counter() - started
    assert out["features"].shape == (batch_size, get_backbone_spec(name).feature_dim)
    return Measurement(batch_size * batches, seconds)


def time_pipeline_features(index: ImageIndex, batch_size: int) -> Measurement:
    """The full ``extract_features`` path (decode, backbone actors, Parquet write) into a temporary cache."""
    from asl_platform.stages.features import extract_features

    with tempfile.TemporaryDirectory(prefix="bench-features-") as cache:
        started = time.perf_counter()
        table = extract_features(index, INGEST_BACKBONE, BENCH_WEIGHTS[INGEST_BACKBONE], cache, batch_size=batch_size)
        seconds = time.perf_counter() - started
    return Measurement(len(table.paths), seconds, int(np.count_nonzero(~table.valid)))


# --------------------------------------------------------------------------- report


def format_report(results: dict) -> str:
    """The final table, as plain text."""
    m, s = results["machine"], results["settings"]
    lines = [
        "",
        "=" * 78,
        "asl_platform ingest benchmark",
        "=" * 78,
        f"machine   : {m['cpu_count']} CPUs ({m['cpu_model']}), load avg at start "
        f"{' '.join(str(x) for x in m['load_average_at_start'])}",
        f"versions  : python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"ray {m['ray']}, pillow {m['pillow']}",
        f"data      : {s['data']} ({s['images']} images, {s['classes']} classes, "
        f"limit/class {s['limit_per_class']})",
        f"settings  : batch {s['batch_size']}, {s['repeats']} alternating passes per pipeline (best shown), "
        f"DataLoader num_workers={s['workers']}, preprocessing of {INGEST_BACKBONE} ({s['image_size']}px)",
        "notes     : files pre-read into the page cache; Ray worker start-up excluded (one small warm-up "
        "pass first); DataLoader worker start-up excluded (one warm-up batch, persistent workers)",
        "",
        f"{'measurement':<52}{'images/s':>12}{'all passes':>14}",
        "-" * 78,
    ]
    for key, label in (("ray_data", "Ray Data decode+preprocess"), ("dataloader", "torchvision ImageFolder+DataLoader")):
        runs = results["ingest"][key]["runs"]
        best = results["ingest"][key]["best_images_per_s"]
        lines.append(f"{label:<52}{best:>12.1f}{'  ' + ' / '.join(f'{r:.0f}' for r in runs):>14}")
    ratio = results["ingest"]["ratio"]
    verdict = "meets" if ratio >= TARGET_RATIO else "below"
    lines.append(f"{'ratio Ray Data / DataLoader (best/best)':<52}{ratio:>11.2f}x  target >= {TARGET_RATIO}x ({verdict})")
    lines.append("")
    lines.append(f"{'feature extraction, in-process, random input':<52}{'images/s':>12}{'ms/batch':>14}")
    lines.append("-" * 78)
    for name, entry in results["features"].items():
        label = f"{name} (weights={entry['weights']}, {entry['image_size']}px, batch {entry['batch_size']})"
        lines.append(f"{label:<52}{entry['images_per_s']:>12.1f}{entry['ms_per_batch']:>14.0f}")
    if results.get("pipeline_features"):
        entry = results["pipeline_features"]
        label = f"extract_features({INGEST_BACKBONE}), Ray pipeline"
        lines.append(f"{label:<52}{entry['images_per_s']:>12.1f}{'':>14}")
        lines.append(f"  ({entry['images']} images in {entry['seconds']:.1f}s: decode + backbone + Parquet write, "
                     "incl. actor start-up and model load)")
    lines.append("=" * 78)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> dict:
    data = Path(args.data).expanduser()
    if not data.is_dir():
        sys.exit(f"error: data folder not found: {data}\n"
                 "Pass --data /path/to/asl-alphabet (a folder of <CLASS>/<image> sub-folders).")
    torch.set_num_threads(os.cpu_count() or 1)
    machine = machine_info()
    logger.info("machine: %s", machine)

    try:
        index = list_images(str(data), max_per_class=args.limit_per_class)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    prep = get_backbone_spec(INGEST_BACKBONE).preprocessing
    logger.info("read %d MB into the page cache", warm_page_cache(index.paths) >> 20)

    loader = build_dataloader(index, prep, args.batch_size, args.workers)
    init_ray()
    logger.info("warming up Ray Data (%d images, not timed)", min(len(index), 2 * args.batch_size))
    run_ray_ingest(subset(index, 2 * args.batch_size), prep, args.batch_size)
    logger.info("warming up the DataLoader (1 batch, not timed)")
    warm_up_dataloader(loader)

    ray_runs: list[Measurement] = []
    loader_runs: list[Measurement] = []
    for repeat in range(args.repeats):
        # Alternate so that a burst of load from elsewhere does not hit one pipeline only.
        order = ("ray", "loader") if repeat % 2 == 0 else ("loader", "ray")
        for which in order:
            if which == "ray":
                ray_runs.append(run_ray_ingest(index, prep, args.batch_size))
                m = ray_runs[-1]
            else:
                loader_runs.append(run_dataloader(loader))
                m = loader_runs[-1]
            logger.info("pass %d %-6s: %d images in %.2fs = %.1f images/s", repeat + 1, which, m.images, m.seconds, m.rate)
            if m.images != len(index):
                logger.warning("%s pass yielded %d images, expected %d", which, m.images, len(index))
    if ray_runs[-1].errors:
        logger.warning("Ray Data reported %d unreadable file(s)", ray_runs[-1].errors)
    del loader  # stops the persistent DataLoader workers before the backbone timings

    ray_best = max(m.rate for m in ray_runs)
    loader_best = max(m.rate for m in loader_runs)
    results: dict = {
        "machine": machine,
        "settings": {
            "data": str(data), "images": len(index), "classes": len(index.classes),
            "limit_per_class": args.limit_per_class, "batch_size": args.batch_size, "workers": args.workers,
            "repeats": args.repeats, "feature_batches": args.feature_batches, "image_size": prep.image_size,
        },
        "ingest": {
            "ray_data": {"runs": [m.rate for m in ray_runs], "seconds": [m.seconds for m in ray_runs],
                         "best_images_per_s": ray_best, "unreadable_files": ray_runs[-1].errors},
            "dataloader": {"runs": [m.rate for m in loader_runs], "seconds": [m.seconds for m in loader_runs],
                           "best_images_per_s": loader_best},
            "ratio": ray_best / loader_best,
            "target_ratio": TARGET_RATIO,
        },
        "features": {},
        "pipeline_features": None,
    }

    if args.pipeline_features:
        logger.info("timing extract_features(%s) on %d images", INGEST_BACKBONE, len(index))
        m = time_pipeline_features(index, args.batch_size)
        results["pipeline_features"] = {"images": m.images, "seconds": m.seconds, "images_per_s": m.rate,
                                        "unreadable_files": m.errors}

    import ray

    ray.shutdown()  # the backbone timings below run in this process only

    for name in args.backbones:
        weights = BENCH_WEIGHTS.get(name, "none")
        logger.info("timing backbone %s (weights=%s): 1 warm-up + %d batch(es) of %d", name, weights,
                    args.feature_batches, args.batch_size)
        m = time_backbone(name, weights, args.batch_size, args.feature_batches)
        results["features"][name] = {
            "weights": weights, "image_size": get_backbone_spec(name).preprocessing.image_size,
            "batch_size": args.batch_size, "batches": args.feature_batches, "seconds": m.seconds,
            "images_per_s": m.rate, "ms_per_batch": 1000 * m.seconds / args.feature_batches,
        }
        logger.info("%s: %.1f images/s", name, m.rate)

    print(format_report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        logger.info("wrote %s", args.json)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args())
