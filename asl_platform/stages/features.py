"""Backbone feature extraction with a Ray Data actor pool, cached as Parquet.

The backbone is frozen, so its features for an image never change: compute them once, write them
with pyarrow, and let every tuning trial and retrain read the small feature table instead of
decoding and running the backbone again. The cache key covers everything that changes a feature.

With ``output="trunk"`` the table holds the activations *before* the backbone's last stage instead
(e.g. 192x7x7 for EfficientNet-Lite0), stored as float16, so the last stage itself can be trained on
them (``model.unfreeze_last_stage`` in the pipeline); ``pool_activations`` turns them into the
pooled features of the frozen backbone.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asl_platform.config import ConfigError, InferenceConfig
from asl_platform.data.cache import FileCache
from asl_platform.data.decode import Preprocessing
from asl_platform.data.listing import ImageIndex
from asl_platform.data.reading import image_dataset, in_path_order, map_with_actors
from asl_platform.limits import MAX_IMAGE_BYTES
from asl_platform.model import build_backbone, get_backbone_spec, split_backbone

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3  # 3: rows per file (data.cache.FileCache)
OUTPUTS = ("features", "trunk")  # pooled backbone features, or the activations before its last stage


@dataclass
class FeatureTable:
    """Features for every listed file, aligned with the ImageIndex order; bad files have ``error``.

    ``features`` is (N, D) float32 pooled features, or (N, C, H, W) float16 trunk activations: kept
    as cached (half the memory of float32 for the largest array of a run) and made float32 per batch."""

    paths: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    errors: np.ndarray
    from_cache: bool = False

    @property
    def valid(self) -> np.ndarray:
        return self.errors == ""

    def take(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = mask & self.valid
        return self.features[keep], self.labels[keep]


class FeatureExtractor:
    """Ray Data callable class: one backbone per actor, reused across batches; run by ONNX Runtime
    (fp32, exported in the actor: about 3x faster on CPU, the same features within float noise, so
    the cache key does not change) or torch (``runtime``)."""

    def __init__(self, backbone: str, weights: str, device: str = "cpu", output: str = "features",
                 runtime: str = "torch", threads: int | None = None, image_size: int | None = None):
        self.device = torch.device(device)
        self.output = output
        model = build_backbone(backbone, weights)
        if output == "trunk":
            model = split_backbone(backbone, model)[0]
        self.onnx = None
        if runtime == "onnxruntime":
            from asl_platform.model.onnx import OnnxImageModel, to_onnx

            # The size the driver decodes to (the graph's input size is fixed at export).
            size = image_size or get_backbone_spec(backbone).preprocessing.image_size
            self.onnx = OnnxImageModel(to_onnx(model, size), threads)
        else:
            # channels_last is ~1.6x faster for these convnets on CPU (oneDNN), and no slower on GPU.
            self.model = model.to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch.pop("image")
        if self.onnx is not None:
            outputs = torch.from_numpy(self.onnx(images))
        else:
            outputs = self.model(torch.from_numpy(images).to(self.device).contiguous(memory_format=torch.channels_last))
        if self.output == "trunk":  # float16 halves what travels and what is cached
            batch["features"] = outputs.contiguous().half().cpu().numpy()
        else:
            batch["features"] = outputs.float().cpu().numpy()
        return batch


def extraction_runtime(inference: InferenceConfig | None, use_gpu: bool) -> str:
    """The runtime of feature extraction: ``inference.runtime`` ('auto': ONNX Runtime on CPU, torch
    on GPU), always in fp32 (features are cached and trained on: int8 noise is not wanted there)."""
    runtime = (inference or InferenceConfig()).runtime
    if runtime == "auto":
        return "torch" if use_gpu else "onnxruntime"
    if runtime == "onnxruntime" and use_gpu:
        raise ConfigError("inference.runtime=onnxruntime runs on CPU only here (no CUDA provider): use torch or "
                          "auto with train.use_gpu")
    return runtime


def cache_header(backbone: str, weights: str, prep: Preprocessing, max_bytes: int, output: str) -> dict:
    """What determines a file's feature besides the file: backbone, weights, preprocessing, the size limit
    (which decides what is skipped), what is output, and the runtime's library versions."""
    header = {"v": CACHE_FORMAT_VERSION, "backbone": backbone, "weights": weights, "prep": prep.to_dict(),
              "max_bytes": max_bytes, "output": output, "torch": torch.__version__}
    if weights not in ("imagenet", "none"):
        stat = os.stat(weights)
        header["weights_stat"] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return header


def extract_features(
    index: ImageIndex,
    backbone: str,
    weights: str,
    cache_root: str | Path,
    batch_size: int = 64,
    concurrency: int | None = None,
    use_gpu: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    output: str = "features",
    inference: InferenceConfig | None = None,
) -> FeatureTable:
    """Features for every file of ``index`` (in index order): the cached rows of files unchanged since
    they were cached (``data.cache.FileCache``), and only the other files extracted.

    ``output="trunk"``: the activations before the backbone's last stage, (N, C, H, W), cached and
    returned as float16 (the same values whether freshly extracted or read back)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    prep = get_backbone_spec(backbone).preprocessing
    runtime = extraction_runtime(inference, use_gpu)
    cache = FileCache.under(cache_root, f"{backbone}-{output}", cache_header(backbone, weights, prep, max_bytes, output))
    if not len(index):
        shape = (0, get_backbone_spec(backbone).feature_dim)
        return FeatureTable(np.zeros(0, object), np.zeros(0, np.int64), np.zeros(shape, np.float32), np.zeros(0, object))
    stamps = index.stamps or [""] * len(index)
    cached, missing = cache.lookup(index.paths, stamps)
    logger.info("%s %s: %d of %d image(s) cached in %s, %d to extract", backbone, output, int((~missing).sum()),
                len(index), cache.directory, int(missing.sum()))
    fresh = _extract(index.without({p for p, m in zip(index.paths, missing) if not m}), backbone, weights, prep,
                     batch_size, concurrency, use_gpu, max_bytes, output, runtime, inference) if missing.any() else {}
    if fresh:
        keep = np.asarray([bool(s) for s in fresh["stamp"]], dtype=bool)  # a file without a stamp is not kept
        cache.add({name: values[keep] for name, values in fresh.items() if name in ("path", "stamp", "error", "features")})
    dtype = np.float16 if output == "trunk" else np.float32
    shape = (cached.get("features") if cached else fresh["features"]).shape[1:]
    features = np.zeros((len(index), *shape), dtype=dtype)
    errors = np.full(len(index), "", dtype=object)
    if cached:
        features[~missing] = cached["features"][~missing]
        errors[~missing] = cached["error"][~missing]
    if fresh:
        rows = np.flatnonzero(missing)
        features[rows] = fresh["features"].astype(dtype, copy=False)
        errors[rows] = fresh["error"]
    return FeatureTable(np.asarray(index.paths, dtype=object), np.asarray(index.labels, dtype=np.int64), features,
                        errors, from_cache=not missing.any())


def _extract(index: ImageIndex, backbone: str, weights: str, prep: Preprocessing, batch_size: int,
             concurrency: int | None, use_gpu: bool, max_bytes: int, output: str, runtime: str,
             inference: InferenceConfig | None) -> dict[str, np.ndarray]:
    """The backbone over ``index``'s files through an actor pool: columns in index order, with stamps."""
    import ray

    # Build once here first: missing weights fail now with a clear message (not inside an actor),
    # and a download (resnet50) happens once, into the cache the actors then read.
    build_backbone(backbone, weights)
    if concurrency is None:
        # One actor per CPU (or GPU): decoding is fused into the actor, so this keeps every core busy.
        concurrency = max(1, int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1)))
    logger.info("extracting %s %s for %d images (%d actor(s), %s)", backbone,
                "features" if output == "features" else "trunk activations (before the last stage)", len(index),
                concurrency, "ONNX Runtime fp32" if runtime == "onnxruntime" else "torch")
    started = time.perf_counter()
    columns = map_with_actors(
        image_dataset(index, prep, batch_size=batch_size, max_bytes=max_bytes), FeatureExtractor,
        {"backbone": backbone, "weights": weights, "device": "cuda" if use_gpu else "cpu", "output": output,
         "runtime": runtime, "threads": (inference or InferenceConfig()).threads, "image_size": prep.image_size},
        batch_size, concurrency, num_gpus=1 if use_gpu else 0)
    columns = in_path_order(columns, index.paths)
    seconds = time.perf_counter() - started
    logger.info("extracted %d feature vectors in %.1fs (%.1f images/s)", len(index), seconds, len(index) / seconds)
    stamps = index.stamps or [""] * len(index)
    return {"path": np.asarray(index.paths, dtype=object), "stamp": np.asarray(stamps, dtype=object),
            "error": columns["error"].astype(object), "features": columns["features"]}


@torch.inference_mode()
def pool_activations(
    activations: np.ndarray, backbone: str, weights: str, batch_size: int = 256, model: torch.nn.Module | None = None
) -> np.ndarray:
    """Trunk activations (N, C, H, W) -> the frozen backbone's pooled features (N, D), by running its
    pretrained last stage once, in-process (cheap next to a second extraction), in float32 and the
    channels-last layout (1.4x on CPU, the same features within float noise)."""
    tail = model if model is not None else split_backbone(backbone, build_backbone(backbone, weights))[1]
    tail = tail.eval().to(memory_format=torch.channels_last)
    dim = get_backbone_spec(backbone).feature_dim
    out = np.empty((len(activations), dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(activations), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(activations[start:start + batch_size], dtype=np.float32))
            out[start:start + batch_size] = tail(batch.contiguous(memory_format=torch.channels_last)).float().numpy()
    return out
