"""Hyperparameter-search benchmark: a >= 16-trial ASHA search on cached features vs recomputing.

On ``../shared/data/asl-alphabet`` with the ``efficientnet_lite0`` backbone it measures, in one run:

1. feature extraction (Ray Data actor pool, into a fresh temporary cache): wall time;
2. the ASHA search on those features: wall time, epochs run over all trials, best val accuracy;
3. one full-image trial epoch that runs the backbone on every image (what a search without the
   cache would do every epoch), timed on a stratified subset and extrapolated per image to the
   same budget (the same total number of epochs over the full train + val splits).

Prints the figures and the targets (whole search < 5 min, >= 20x faster than recomputing, best
val accuracy >= 97%); a benchmark, not a test. Run from the repository root::

    python bench/tune.py [--samples 16] [--json bench-tune.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from asl_platform.config import Config, load_config
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.model import get_backbone_spec
from asl_platform.stages.features import extract_features
from asl_platform.training import recipe
from asl_platform.training.loop import EarlyStopping, TrainingState, fit
from asl_platform.training.search import run_search, searched_values
from asl_platform.training.sources import FileBatches

logger = logging.getLogger("bench.tune")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "asl-alphabet"
BACKBONE, WEIGHTS = "efficientnet_lite0", "imagenet"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="image folder (default ../shared/data/asl-alphabet)")
    parser.add_argument("--samples", type=int, default=16, help="number of ASHA trials (>= 16 for the target)")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--recompute-per-class", type=int, default=6,
                        help="images per class for the timed full-image epoch (extrapolated per image)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser.parse_args()


def split_files(index, split: str) -> tuple[list[str], list[int]]:
    chosen = [i for i, s in enumerate(index.splits) if s == split]
    return [index.paths[i] for i in chosen], [index.labels[i] for i in chosen]


def time_recompute_epoch(index, per_class: int, cfg: Config) -> float:
    """Seconds per image of one full-image epoch (train step on train images, eval on val images),
    with the backbone frozen as in the search: the cost the feature cache removes. It runs what a
    full-image trial runs: ``loop.fit`` over files decoded in-process."""
    torch.set_num_threads(os.cpu_count() or 1)
    subset = stratified_split(list_images(index.root, max_per_class=per_class, seed=1), 0.5, 0.0, seed=1)
    train, val = split_files(subset, "train"), split_files(subset, "val")
    model = recipe.build_model(cfg, "images", len(subset.classes))
    prep, cpu = get_backbone_spec(BACKBONE).preprocessing, torch.device("cpu")
    started = time.perf_counter()
    for _ in fit(model, recipe.make_optimizer(model, cfg), FileBatches(*train, prep, 64, cpu, shuffle=True),
                 FileBatches(*val, prep, 64, cpu), epochs=1, state=TrainingState(EarlyStopping(None))):
        pass
    seconds = time.perf_counter() - started
    images = len(train[0]) + len(val[0])
    logger.info("full-image epoch on %d images: %.1fs (%.1f images/s)", images, seconds, images / seconds)
    return seconds / images


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"dataset not found: {args.data} (see ../shared/data/README.md)")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    index = stratified_split(list_images(args.data), 0.15, 0.15, seed=42)
    train_files, val_files = split_files(index, "train"), split_files(index, "val")

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        table = extract_features(index, BACKBONE, WEIGHTS, Path(tmp) / "cache")
        extraction = time.perf_counter() - started
        splits = np.asarray(index.splits)
        data = {"kind": "features", "train": table.take(splits == "train"), "val": table.take(splits == "val"),
                "num_classes": len(index.classes)}
        cfg = load_config(None, [f"model.backbone={BACKBONE}", f"model.weights={WEIGHTS}", "model.hidden_size=256",
                                 f"tune.num_samples={args.samples}", f"tune.max_epochs={args.max_epochs}",
                                 "tune.grace_period=2", "tune.reduction_factor=3", f"run.storage_path={Path(tmp) / 'ray'}"])
        started = time.perf_counter()
        best, rows, _ = run_search(data, cfg, "bench")
        search = time.perf_counter() - started
    ray.shutdown()

    epochs_run = sum(row.get("epochs", 0) for row in rows)
    per_image = time_recompute_epoch(index, args.recompute_per_class, cfg)
    recompute = epochs_run * per_image * (len(train_files[0]) + len(val_files[0]))
    whole = extraction + search
    figures = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
        "images": len(index), "train": len(train_files[0]), "val": len(val_files[0]),
        "trials": len(rows), "stopped_early": sum(bool(r.get("stopped_early")) for r in rows), "epochs_run": epochs_run,
        "feature_extraction_s": round(extraction, 1), "search_s": round(search, 1), "whole_search_s": round(whole, 1),
        "recompute_s_extrapolated": round(recompute, 1), "speedup_vs_recompute": round(recompute / whole, 1),
        "best_val_accuracy": rows[0]["best_val_accuracy"], "best_val_loss": rows[0]["best_val_loss"],
        "best_hyperparameters": searched_values(best.model_dump()),
    }
    width = 58
    print("\n" + "=" * 78)
    print("asl_platform tune benchmark (ASHA on cached efficientnet_lite0 features)")
    print("=" * 78)
    print(f"machine : {figures['machine']}")
    print(f"data    : {args.data}: {len(index)} images, train {figures['train']}, val {figures['val']}")
    print(f"search  : {len(rows)} trials, {figures['stopped_early']} stopped early by ASHA, {epochs_run} epochs in all")
    print(f"{'feature extraction (Ray Data actor pool)':<{width}} {extraction:8.1f} s")
    print(f"{'ASHA search on cached features':<{width}} {search:8.1f} s")
    print(f"{'whole search (extraction + search)':<{width}} {whole:8.1f} s   target < 300 s")
    print(f"{'same budget recomputing the backbone (extrapolated)':<{width}} {recompute:8.1f} s")
    print(f"{'speed-up vs recomputing':<{width}} {recompute / whole:8.1f} x   target >= 20x")
    print(f"{'best validation accuracy':<{width}} {rows[0]['best_val_accuracy']:8.2%}   target >= 97%")
    print(f"best hyperparameters: {figures['best_hyperparameters']}")
    print("=" * 78)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
