"""Training throughput of each cached-array kind in float32 and under bfloat16 autocast, with the
training loop the pipeline uses (``training.loop.train_one_epoch``) and the models it builds
(``training.recipe.build_model``), on inputs shaped like the real ones (speed does not depend on the
values). For the last stage on activations also the layout before channels-last, so the table shows
what ``train.precision=auto`` and the channels-last layout each bring. Run from the repository root::

    python bench/train_precision.py [--backbone efficientnet_lite0] [--batches 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from asl_platform.config import Config
from asl_platform.hands.rows import INPUT_DIM
from asl_platform.model import build_backbone, get_backbone_spec
from asl_platform.model.backbones import split_backbone
from asl_platform.training import recipe
from asl_platform.training.loop import train_one_epoch

logger = logging.getLogger("bench.train_precision")


def input_shape(cfg: Config, kind: recipe.Kind) -> tuple[int, ...]:
    """One row of ``kind``'s cached input: trunk activations, pooled features or a landmark row."""
    if kind == "landmarks":
        return (INPUT_DIM,)
    spec = get_backbone_spec(cfg.model.backbone)
    if kind == "features":
        return (spec.feature_dim,)
    trunk = split_backbone(cfg.model.backbone, build_backbone(cfg.model.backbone, cfg.model.weights))[0]
    with torch.inference_mode():
        return tuple(trunk.eval()(torch.zeros(1, 3, spec.preprocessing.image_size, spec.preprocessing.image_size)).shape[1:])


def images_per_second(cfg: Config, kind: recipe.Kind, shape: tuple[int, ...], batches: int, amp: bool,
                      channels_last: bool) -> float:
    """Images/s of ``train_one_epoch`` over ``batches`` batches of ``train.batch_size`` (after one warm-up epoch)."""
    torch.manual_seed(0)
    model = recipe.build_model(cfg, kind, 29, shape[0] if len(shape) == 1 else None)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if len(shape) == 3:
        model = model.to(memory_format=layout)
    data = []
    for _ in range(batches):
        inputs = torch.randn(cfg.train.batch_size, *shape)
        data.append((inputs.contiguous(memory_format=layout) if len(shape) == 3 else inputs,
                     torch.randint(0, 29, (cfg.train.batch_size,))))
    optimizer = recipe.make_optimizer(model, cfg)
    train_one_epoch(model, optimizer, data[:3], amp=amp)  # warm-up: kernels chosen, memory allocated
    result = train_one_epoch(model, optimizer, data, amp=amp)
    return result["images"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batches", type=int, default=40, help="batches of 64 timed per setting")
    parser.add_argument("--repeats", type=int, default=2, help="each setting this many times, interleaved (best kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(torch.get_num_threads())
    cfg = Config.model_validate({"model": {"backbone": args.backbone, "hidden_size": 512}})
    logger.info("CPU with native bfloat16 (AMX or AVX-512 BF16): %s; %d thread(s)", recipe.native_bf16_cpu(),
                torch.get_num_threads())
    settings = {"activations": [("float32, contiguous (before)", False, False), ("float32, channels-last", False, True),
                                ("bfloat16, contiguous", True, False),
                                ("bfloat16, channels-last (now)", True, True)],
                "features": [("float32 (now)", False, False), ("bfloat16", True, False)],
                "landmarks": [("float32 (now)", False, False), ("bfloat16", True, False)]}
    rows = []
    for kind, options in settings.items():
        shape = input_shape(cfg, kind)
        best = {name: 0.0 for name, _, _ in options}
        for _ in range(args.repeats):  # interleaved, so a noisy moment hits every setting alike
            for name, amp, channels_last in options:
                best[name] = max(best[name], images_per_second(cfg, kind, shape, args.batches, amp, channels_last))
        baseline = best[options[0][0]]
        rows += [(kind, name, value, value / baseline) for name, value in best.items()]
    print("\n| kind | setting | training images/s | vs first |\n|---|---|---|---|")
    for kind, name, value, ratio in rows:
        print(f"| {kind} | {name} | {value:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
