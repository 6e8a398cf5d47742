"""Run a model over files with Ray Data: an actor pool of ``Predictor``s (or of hand detectors) over a
list of paths, rows put back in the paths' order, and for a hand-aware model the hands, the landmark
model and the card's fusion rule. The evaluate, export and hands stages and batch prediction all run
through here, so a model gives the same answer wherever it is run over files."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from asl_platform.config import DataConfig, InferenceConfig
from asl_platform.data.decode import error_text
from asl_platform.data.listing import ImageIndex
from asl_platform.data.reading import image_dataset, in_path_order, load_image, map_with_actors
from asl_platform.hands.detect import DETECT_MAX_SIDE, DetectionSettings, HandDetector, mediapipe_version
from asl_platform.hands.rows import POINT_VALUES, HandTable
from asl_platform.model import ModelCard, model_location, resolve_model_dir
from asl_platform.runtime import init_ray

logger = logging.getLogger(__name__)

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
    columns = map_with_actors(
        image_dataset(ImageIndex.of_paths(unique), prep, batch_size=batch_size, max_bytes=max_bytes), _BatchPredictor,
        {"model_dir": location, "device": "cuda" if use_gpu else "cpu",
         "inference": (inference or InferenceConfig()).model_dump()},
        batch_size, concurrency, num_gpus=1 if use_gpu else 0)
    ordered = in_path_order(columns, paths)
    probabilities = ordered["probabilities"].astype(np.float32)
    return probabilities, [str(error) for error in ordered["error"]]


class HandsActor:
    """Ray Data callable class: reads, decodes and detects; one MediaPipe graph per actor."""

    def __init__(self, settings: dict, max_bytes: int):
        self.detector = HandDetector(DetectionSettings.from_dict(settings))
        self.max_bytes = max_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["path"])
        out = {
            "path": np.asarray(batch["path"]).astype(str), "label": np.asarray(batch["label"]).astype(np.int64),
            "error": np.full(rows, "", dtype=object), "found": np.zeros(rows, bool),
            "landmarks": np.zeros((rows, POINT_VALUES), np.float32), "right": np.zeros(rows, np.float32),
            "score": np.zeros(rows, np.float32), "box": np.zeros((rows, 4), np.float32),
        }
        for i, path in enumerate(out["path"]):
            try:
                image = np.asarray(load_image(str(path), self.max_bytes, draft_size=DETECT_MAX_SIDE))
            except Exception as exc:  # as in decode_batch: one bad file is one error row
                out["error"][i] = error_text(exc)
                continue
            hand = self.detector.detect(image)
            if hand is not None:
                out["found"][i] = True
                out["landmarks"][i] = hand.landmarks.reshape(-1)
                out["right"][i] = 1.0 if hand.handedness == "Right" else 0.0
                out["score"][i] = hand.score
                out["box"][i] = hand.box
        return out


def find_hands(index: ImageIndex, settings: DetectionSettings, batch_size: int = 64, concurrency: int | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[HandTable, float]:
    """MediaPipe over every file of ``index``: its ``HandTable`` in index order, and the seconds it took."""
    if not len(index):
        return HandTable.from_columns({}), 0.0
    import ray
    import ray.data

    init_ray(worker_logs=False)
    blocks = max(1, -(-len(index) // (batch_size * 2)))  # small blocks: steady progress, little lost to a crash
    if concurrency is None:  # decoding and detection both run in the actor: one per CPU keeps every core busy
        concurrency = max(1, min(int(ray.cluster_resources().get("CPU", 1)), blocks))  # no idle actors
    logger.info("detecting hands in %d images (%d actor(s), MediaPipe %s, %s)", len(index), concurrency,
                mediapipe_version(), settings.to_dict())
    started = time.perf_counter()
    records = [{"path": p, "label": y} for p, y in zip(index.paths, index.labels)]
    columns = map_with_actors(ray.data.from_items(records, override_num_blocks=blocks), HandsActor,
                              {"settings": settings.to_dict(), "max_bytes": max_bytes}, batch_size, concurrency)
    table = HandTable.from_columns(columns)
    seconds = time.perf_counter() - started
    readable = table.valid
    logger.info("hands found in %d of %d readable images (%.1f%%) in %.1fs (%.1f ms per image per actor)",
                int(table.found[readable].sum()), int(readable.sum()), 100 * table.found[readable].mean() if readable.any() else 0,
                seconds, 1000 * seconds * concurrency / max(len(table.paths), 1))
    return table.in_order(index.paths), seconds


def landmark_answers(model_dir: str | Path, paths: list[str], batch_size: int = 64,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A hand-aware model's hand side on ``paths``: MediaPipe with the model's detection settings and
    the landmark model. Per path: hand found, landmark probabilities (zeros without a hand), the
    landmark rows (``hands.landmark_inputs``) and the detection error ("" when the file was read)."""
    from asl_platform.model.landmarks import landmark_probabilities
    from asl_platform.model.store import load_landmark_model

    directory = resolve_model_dir(model_location(model_dir))
    card = ModelCard.load(directory)
    unique = list(dict.fromkeys(str(p) for p in paths))
    hands, _ = find_hands(ImageIndex.of_paths(unique), card.hands.detection.settings(), batch_size, max_bytes=max_bytes)
    hands = hands.in_order([str(p) for p in paths])  # a path listed twice gets its row twice
    found = hands.found & hands.valid
    rows = hands.inputs()
    model = load_landmark_model(directory, card) if found.any() else None
    landmarks = landmark_probabilities(model, rows, found, len(card.classes)) if model is not None else \
        np.zeros((len(paths), len(card.classes)), np.float32)
    return found, landmarks, rows, [str(error) for error in hands.errors]


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
