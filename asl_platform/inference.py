"""Run a model over files with Ray Data: one actor pool of ``Predictor``s over a list of paths, rows put
back in the paths' order, and for a hand-aware model the hands stage, the landmark model and the card's
fusion rule. ``evaluate``, ``batch`` and the export's cross-domain scoring all answer through here, so a
model gives the same answer wherever it is run over files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from asl_platform.config import DataConfig, InferenceConfig
from asl_platform.data import ImageIndex
from asl_platform.model import ModelCard

DEFAULT_MAX_BYTES = DataConfig().max_image_bytes


class _BatchPredictor:
    """Ray Data callable class: loads the model once per actor and keeps only small columns."""

    def __init__(self, model_dir: str, device: str = "cpu", inference: dict | None = None):
        from asl_platform.model import Predictor

        self.predictor = Predictor(model_dir, device=device, inference=InferenceConfig.model_validate(inference or {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch["error"]).astype(str)
        probabilities = self.predictor.predict_arrays(np.ascontiguousarray(batch["image"])).astype(np.float32)
        probabilities[errors != ""] = np.nan  # placeholder pixels: no prediction for a bad file
        return {"path": np.asarray(batch["path"]).astype(str), "error": errors, "probabilities": probabilities}


def predict_paths(
    model_dir: str | Path,
    paths: list[str],
    batch_size: int = 64,
    concurrency: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    use_gpu: bool = False,
    inference: InferenceConfig | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Class probabilities (aligned with ``paths``) and an error per path ("" when fine).

    Unreadable files get a row of NaN. Ray Data returns rows in any order, so rows are put back
    in ``paths`` order by path.
    """
    import ray
    import ray.data

    from asl_platform.data import image_dataset
    from asl_platform.model import ModelCard, model_location, resolve_model_dir
    from asl_platform.runtime import init_ray

    location = model_location(model_dir)  # what the actors load: they may run on other nodes
    card = ModelCard.load(resolve_model_dir(location))
    num_classes, prep = len(card.classes), card.prep
    paths = [str(p) for p in paths]
    if not paths:
        return np.zeros((0, num_classes), dtype=np.float32), []
    init_ray(worker_logs=False)  # inference actors have nothing to tell the terminal
    if concurrency is None:
        available = int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1))
        concurrency = max(1, min(available, math.ceil(len(paths) / batch_size)))  # no idle actors
    unique = list(dict.fromkeys(paths))
    index = ImageIndex(root="", layout="paths", classes=[], paths=unique, labels=[-1] * len(unique))
    dataset = image_dataset(index, prep, batch_size=batch_size, max_bytes=max_bytes).map_batches(
        _BatchPredictor,
        fn_constructor_kwargs={"model_dir": location, "device": "cuda" if use_gpu else "cpu",
                               "inference": (inference or InferenceConfig()).model_dump()},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=1 if use_gpu else 0,
    )
    rows: dict[str, tuple[np.ndarray, str]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for path, error, probs in zip(batch["path"], batch["error"], batch["probabilities"]):
            rows[str(path)] = (probs, str(error))
    missing = [p for p in unique if p not in rows]
    if missing:  # would mean a lost row: never return silently misaligned results
        raise RuntimeError(f"{len(missing)} path(s) came back from Ray Data without a prediction, e.g. {missing[:3]}")
    probabilities = np.stack([rows[p][0] for p in paths]).astype(np.float32)
    return probabilities, [rows[p][1] for p in paths]


def landmark_answers(model_dir: str | Path, paths: list[str], batch_size: int = 64,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A hand-aware model's hand side on ``paths``: the hands stage (MediaPipe with the model's
    detection settings) and the landmark model. Per path: hand found, landmark probabilities (zeros
    without a hand), the landmark rows (``hands.landmark_inputs``) and the detection error ("" when
    the file was read)."""
    import torch

    from asl_platform.hands import detect_hands
    from asl_platform.model import model_location, resolve_model_dir
    from asl_platform.model.store import load_landmark_model

    directory = resolve_model_dir(model_location(model_dir))
    card = ModelCard.load(directory)
    detection = card.hands.detection
    unique = list(dict.fromkeys(str(p) for p in paths))
    index = ImageIndex(root="", layout="paths", classes=[], paths=unique, labels=[-1] * len(unique))
    hands = detect_hands(index, detection.settings(), cache_root=None, batch_size=batch_size, max_bytes=max_bytes)
    row = {path: i for i, path in enumerate(unique)}
    order = np.asarray([row[str(p)] for p in paths], dtype=np.int64)
    found = hands.found[order] & hands.valid[order]
    landmarks = np.zeros((len(paths), len(card.classes)), np.float32)
    rows = hands.inputs(order)
    if found.any():
        model = load_landmark_model(directory, card)
        with torch.inference_mode():
            landmarks[found] = torch.softmax(model(torch.from_numpy(rows[found])), 1).numpy()
    return found, landmarks, rows, [str(hands.errors[i]) for i in order]


class PathAnswers(NamedTuple):
    """A model's answers on a list of paths: probabilities (NaN rows for unreadable files), an error
    per path ("" when fine), and for a hand-aware model whether a hand was found and its landmark rows."""

    probabilities: np.ndarray
    errors: list[str]
    found: np.ndarray | None = None
    rows: np.ndarray | None = None


def predict_paths_with_hands(
    model_dir: str | Path, paths: list[str], batch_size: int = 64, max_bytes: int = DEFAULT_MAX_BYTES,
    use_gpu: bool = False, inference: InferenceConfig | None = None,
) -> PathAnswers:
    """``predict_paths``, and for a hand-aware model the answer it gives: its image model, the hand
    side (``landmark_answers``) and the card's fusion rule."""
    from asl_platform.model import model_location, resolve_model_dir
    from asl_platform.model.fusion import fuse

    probabilities, errors = predict_paths(model_dir, paths, batch_size=batch_size, max_bytes=max_bytes, use_gpu=use_gpu,
                                          inference=inference)
    card = ModelCard.load(resolve_model_dir(model_location(model_dir)))
    if card.kind != "hand_aware" or not len(paths):
        return PathAnswers(probabilities, errors)
    found, landmarks, rows, hand_errors = landmark_answers(model_dir, paths, batch_size, max_bytes)
    errors = [e or (f"hand detection: {h}" if h else "") for e, h in zip(errors, hand_errors)]
    bad = np.asarray([bool(e) for e in errors], dtype=bool)
    fused = fuse(card.fusion.rule, np.nan_to_num(probabilities), landmarks, found, card.classes).astype(np.float32)
    fused[bad] = np.nan
    return PathAnswers(fused, errors, found, rows)
