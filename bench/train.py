"""Training-throughput benchmark: Ray Train (TorchTrainer fed by Ray Data shards) vs a plain loop.

Same images, same model, same augmentation, same batch size, in one run:

1. Ray Train: ``asl_platform.training.trainer.run_training`` (1 worker; Ray Data decodes and augments on
   the remaining CPUs), images/s of the last epoch (the first warms up);
2. a plain single-process PyTorch loop: read, decode, augment, preprocess and train inline.

Prints both and the ratio (target >= 0.85). The accuracy figures come from a full training run,
e.g. ``asl-platform train --config best_config.yaml --set data.cross_domain_root=../shared/data/asl-webcam``
(``--accuracy`` runs exactly that here). Run from the repository root::

    python bench/train.py [--per-class 20] [--backbone efficientnet_lite0] [--accuracy]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import ray
import torch

from asl_platform.config import Config, load_config
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.model import get_backbone_spec
from asl_platform.training import recipe
from asl_platform.training.loop import train_one_epoch
from asl_platform.training.sources import FileBatches
from asl_platform.training.trainer import run_training

logger = logging.getLogger("bench.train")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "asl-alphabet"
DEFAULT_WEBCAM = DEFAULT_DATA.parent / "asl-webcam"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--per-class", type=int, default=20, help="images per class for the throughput part")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="Ray Train epochs; the last one is timed")
    parser.add_argument("--accuracy", action="store_true", help="also run a full `train` and print its accuracies")
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args()


def plain_loop_images_per_second(paths: list[str], labels: list[int], cfg: Config) -> float:
    """One epoch of the simplest single-process loop doing the same work as a Ray Train worker: the
    platform's own ``train_one_epoch`` over files read, decoded and augmented inline."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = recipe.build_model(cfg, "images", 29)
    optimizer = recipe.make_optimizer(model, cfg)
    prep = get_backbone_spec(cfg.model.backbone).preprocessing
    batches = FileBatches(paths, labels, prep, cfg.train.batch_size, torch.device("cpu"), shuffle=True, augment=True)
    stats = train_one_epoch(model, optimizer, batches.batches(1))
    return stats["images"] / stats["seconds"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"dataset not found: {args.data} (see ../shared/data/README.md)")
    weights = "none" if args.backbone in ("resnet50", "tiny") else "imagenet"
    index = stratified_split(list_images(args.data, max_per_class=args.per_class, seed=3), 0.1, 0.0, seed=3)
    train_index, val_index = index.subset("train"), index.subset("val")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"model.backbone={args.backbone}", f"model.weights={weights}", "model.hidden_size=128",
                                 f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
                                 f"train.early_stopping_patience={args.epochs}", "train.augment=true",
                                 f"run.storage_path={tmp}"])
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        trained = run_training(cfg, "images", len(index.classes), "bench",
                               index={"train": train_index, "val": val_index})
        ray.shutdown()
    ray_rate = trained.history[-1]["images_per_second"]
    plain_rate = plain_loop_images_per_second(train_index.paths, train_index.labels, cfg)

    figures = {
        "cpus": os.cpu_count(), "backbone": args.backbone, "train_images": len(train_index), "batch_size": args.batch_size,
        "ray_train_images_per_s": round(ray_rate, 1), "plain_loop_images_per_s": round(plain_rate, 1),
        "ratio": round(ray_rate / plain_rate, 2),
        "ray_data_wait_s_last_epoch": round(trained.history[-1]["data_wait_seconds"], 1),
    }
    if args.accuracy:
        from asl_platform.pipeline import run_train

        full = load_config(None, [f"data.root={args.data}", f"data.cross_domain_root={DEFAULT_WEBCAM}",
                                  f"model.backbone={args.backbone}", f"model.weights={weights}", "run.name=bench-train"])
        summary = run_train(full)
        figures.update({k: summary["metrics"].get(k) for k in ("test_accuracy", "cross_domain_accuracy")})

    print("\n" + "=" * 72)
    print(f"asl_platform training throughput ({args.backbone}, {len(train_index)} images, augmentation on)")
    print("=" * 72)
    print(f"{'Ray Train (1 worker, Ray Data shards), last epoch':<52} {ray_rate:8.1f} images/s")
    print(f"{'plain single-process PyTorch loop':<52} {plain_rate:8.1f} images/s")
    print(f"{'ratio Ray Train / plain':<52} {ray_rate / plain_rate:8.2f}x   target >= 0.85x")
    for key in ("test_accuracy", "cross_domain_accuracy"):
        if key in figures and figures[key] is not None:
            print(f"{key:<52} {figures[key]:8.2%}")
    print("=" * 72)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
