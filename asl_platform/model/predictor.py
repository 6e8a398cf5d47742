"""``Predictor``: a model folder loaded once, classifying images the way it was trained to see them
(the preprocessing recorded in its card). Evaluation, batch inference and serving all use it.

The image model runs through ONNX Runtime (fp32, or int8 where the card allows it) or torch, as
``inference`` (the config section) says: ``choose_runtime``. A folder exported before ONNX export
existed is converted on load.

A hand-aware folder also detects the hand (MediaPipe, with the settings it was trained with), runs
the landmark model on it and combines both models by the card's fusion rule. Given a person's
calibration (``model.calibration``), the answer to an image with a hand found is adapted by their own shots.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from asl_platform.config import ConfigError, InferenceConfig
from asl_platform.data.decode import normalize_batch, resize_for_model
from asl_platform.hands.rows import hand_rows
from asl_platform.model.calibration import Calibration, calibrated_probabilities, shot_distances, with_typical_hands
from asl_platform.model.card import ModelCard
from asl_platform.model.fusion import fuse
from asl_platform.model.onnx import FP32_FILE, OnnxImageModel, to_onnx
from asl_platform.model.store import load_landmark_model, load_model_dir, resolve_model_dir

logger = logging.getLogger(__name__)


def choose_runtime(inference: InferenceConfig, card: ModelCard, device: str) -> tuple[str, str]:
    """(runtime, precision) the image model runs with: ``torch``/``fp32`` or ``onnxruntime`` with
    ``fp32``/``int8``. 'auto' means ONNX Runtime on CPU, torch on GPU, and int8 only where the card's
    export check passed. A setting that cannot be honoured is an error, never silently replaced."""
    runtime = inference.runtime if inference.runtime != "auto" else ("onnxruntime" if device == "cpu" else "torch")
    if runtime == "torch":
        if inference.precision == "int8":
            raise ConfigError("inference.precision=int8 needs inference.runtime onnxruntime (or auto on CPU)")
        return "torch", "fp32"
    if device != "cpu":
        raise ConfigError(f"inference.runtime=onnxruntime runs on CPU only here (the onnxruntime package has no "
                          f"CUDA provider), not on {device}: use inference.runtime torch or auto")
    int8_ok = card.onnx is not None and card.onnx.int8_usable
    if inference.precision == "int8" and not int8_ok:
        why = card.onnx.int8_verdict if card.onnx else "the model was exported before ONNX export existed (no int8 file)"
        raise ConfigError(f"inference.precision=int8 refused for this model: {why}")
    return "onnxruntime", "int8" if inference.precision in ("auto", "int8") and int8_ok else "fp32"


class Predictor:
    def __init__(self, directory: str | Path, device: str = "cpu", inference: InferenceConfig | None = None):
        directory = resolve_model_dir(directory)
        self.model, self.card = load_model_dir(directory)
        self.device = torch.device(device)
        inference = inference or InferenceConfig()
        self.runtime, self.precision = choose_runtime(inference, self.card, self.device.type)
        self.onnx: OnnxImageModel | None = None
        if self.runtime == "onnxruntime":
            self.onnx = self._onnx_model(directory, inference.threads)
            self.model = None  # the ONNX session holds the weights; the torch copy would only cost memory
        else:
            self.model.to(self.device, memory_format=torch.channels_last)  # about 1.2x faster convolutions on CPU
        self.classes: list[str] = self.card.classes
        self.preprocessing = self.card.prep
        self.hand_aware = self.card.kind == "hand_aware"
        self.landmark_model = load_landmark_model(directory, self.card) if self.hand_aware else None
        self.typical_hands = _typical_hands(directory, self.classes) if self.hand_aware else None
        self._detector = None
        self._detector_lock = threading.Lock()  # one MediaPipe graph, callers on several threads

    def _onnx_model(self, directory: Path, threads: int | None) -> OnnxImageModel:
        if self.card.onnx is None or not (directory / FP32_FILE).is_file():
            logger.info("%s has no ONNX file (exported before ONNX export existed): converting on load", directory)
            return OnnxImageModel(to_onnx(self.model, self.card.prep.image_size), threads)
        name = self.card.onnx.int8_file if self.precision == "int8" else self.card.onnx.fp32_file
        return OnnxImageModel(directory / name, threads)

    @property
    def runtime_name(self) -> str:
        """What runs the image model, as ``/v1/model`` and the logs name it, e.g. 'onnxruntime int8'."""
        return "torch" if self.runtime == "torch" else f"onnxruntime {self.precision}"

    @property
    def detector(self):
        """The hand detector, made on first use (a MediaPipe graph costs ~100 ms to build); use
        ``detect``, which holds the lock, from code that may run on several threads."""
        with self._detector_lock:
            if self._detector is None:
                from asl_platform.hands.detect import HandDetector, mediapipe_version

                detection = self.card.hands.detection
                if detection.mediapipe != mediapipe_version():
                    logger.warning("the model's hands were detected with MediaPipe %s during training; this is %s: "
                                   "landmarks may differ a little", detection.mediapipe, mediapipe_version())
                self._detector = HandDetector(detection.settings())
            return self._detector

    def detect(self, images: list[np.ndarray]) -> list:
        """The ``Hand`` (or None) in each RGB uint8 image, one at a time on the one detector."""
        detector = self.detector
        with self._detector_lock:
            return [detector.detect(np.ascontiguousarray(image)) for image in images]

    @torch.inference_mode()
    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NCHW batch -> the image model's class probabilities (N, C)."""
        if self.onnx is not None:
            return torch.softmax(torch.from_numpy(self.onnx(batch)), dim=1).numpy()
        images = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        logits = self.model(images)
        return torch.softmax(logits, dim=1).cpu().numpy()

    @torch.inference_mode()
    def predict_landmarks(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 64) landmark rows (``hands.landmark_inputs``) -> the landmark model's probabilities."""
        if not len(inputs):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.softmax(self.landmark_model(torch.from_numpy(np.asarray(inputs, np.float32))), dim=1).numpy()

    @torch.inference_mode()
    def embed_landmarks(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 64) landmark rows -> the landmark model's hidden layer, where calibration compares hands."""
        return self.landmark_model.embed(torch.from_numpy(np.asarray(inputs, np.float32))).numpy()

    def predict_calibrated(self, inputs: np.ndarray, calibration: Calibration,
                           model_probs: np.ndarray | None = None) -> np.ndarray:
        """(N, 64) landmark rows of one person -> the model's answer (``model_probs``, else the landmark
        model's) adapted by their shots (``model.calibration.calibrated_probabilities``: a letter they did not
        calibrate is one the profile says nothing of), at the card's fitted temperature. The distances are on the
        scale of the shots and the model's typical hands (``hand_shapes.json``) together, so that a profile of
        one letter has a scale too."""
        if not self.hand_aware:
            raise ValueError("calibration needs a hand-aware model (model.kind=hand_aware)")
        if not len(inputs):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        inputs = np.asarray(inputs, np.float32)
        reference = with_typical_hands(calibration, self.typical_hands)  # the typical hands: the scale's only
        distances = shot_distances(self.embed_landmarks, reference, inputs, len(self.classes))
        distances[:, ~np.isin(np.arange(len(self.classes)), calibration.labels)] = np.inf  # the profile says nothing
        model_probs = self.predict_landmarks(inputs) if model_probs is None else model_probs
        return calibrated_probabilities(model_probs, distances, self.calibration_temperature)

    @property
    def calibration_temperature(self) -> float:
        """How far a person's shots are trusted over the model (fitted at export on held-out people)."""
        confidence = self.card.confidence
        return confidence.temperature if confidence and confidence.temperature else DEFAULT_TEMPERATURE

    def combine(self, image_probs: np.ndarray, landmark_inputs: np.ndarray, found: np.ndarray,
                calibrations: list[Calibration | None] | None = None) -> np.ndarray:
        """The answer of a hand-aware model from the image model's probabilities and the hands; where an
        image comes with its person's calibration and a hand was found, that answer adapted by the calibration."""
        if not self.hand_aware:
            return image_probs
        found = np.asarray(found, dtype=bool)
        landmark_probs = np.zeros_like(image_probs)
        landmark_probs[found] = self.predict_landmarks(landmark_inputs[found])
        answers = fuse(self.card.fusion.rule, image_probs, landmark_probs, found, self.classes)
        for calibration, rows in _by_calibration(calibrations, found):
            answers[rows] = self.predict_calibrated(landmark_inputs[rows], calibration, answers[rows])
        return answers

    def predict_with_hands(self, images: list[Image.Image]) -> tuple[np.ndarray, list]:
        """RGB images -> probabilities and, per image, the ``Hand`` found (or None; always None for
        an image-only model). Both models see the images as given; the served path decodes each
        model's input as training did instead (``serving.backends.ImageClassifier``)."""
        return self.predict_uint8_with_hands(np.stack([resize_for_model(i, self.preprocessing) for i in images])
                                             if images else np.zeros((0, 1, 1, 3), np.uint8),
                                             [np.asarray(image) for image in images])

    def predict_uint8_with_hands(self, batch: np.ndarray, detection_images: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """The image model on a uint8 NHWC batch at its input size, the hand detector on the same
        images decoded for detection (see ``hands.detect.DETECT_MAX_SIDE``), combined by the card's rule."""
        if not len(batch):
            return np.zeros((0, len(self.classes)), dtype=np.float32), []
        image_probs = self.predict_uint8(batch)
        if not self.hand_aware:
            return image_probs, [None] * len(batch)
        hands = self.detect(detection_images)
        return self.combine_with_hands(image_probs, hands), hands

    def combine_with_hands(self, image_probs: np.ndarray, hands: list,
                           calibrations: list[Calibration | None] | None = None) -> np.ndarray:
        """``combine`` from the ``Hand`` (or None) found in each image."""
        rows, found = hand_rows(hands)
        return self.combine(image_probs, rows, found, calibrations)

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC batch at the model's input size (see ``resize_for_model``) -> the image model's
        probabilities (a hand-aware model needs the images themselves: ``predict_with_hands``)."""
        return self.predict_arrays(normalize_batch(batch, self.preprocessing))


DEFAULT_TEMPERATURE = 0.25  # of calibrated answers, for a card from before it was fitted for them (format < 6)


def _typical_hands(directory: Path, classes: list[str]) -> Calibration:
    """Each letter's typical hand (``hand_shapes.json``) as a landmark row: what calibration falls back
    on for a letter the person did not calibrate."""
    from asl_platform.hands.shapes import load_shapes

    shapes = load_shapes(directory)
    rows = [np.append(shape.points.reshape(-1), 1.0) for shape in shapes.values()]  # canonical: a right hand
    return Calibration(np.asarray(rows, np.float32).reshape(-1, 64),
                       np.asarray([classes.index(name) for name in shapes], np.int64))


def _by_calibration(calibrations: list[Calibration | None] | None, found: np.ndarray):
    """(calibration, row indices) for each distinct calibration among the images with a hand found."""
    groups: dict[int, tuple[Calibration, list[int]]] = {}
    for row, calibration in enumerate(calibrations or []):
        if calibration is not None and found[row]:
            groups.setdefault(id(calibration), (calibration, []))[1].append(row)
    return [(calibration, np.asarray(rows)) for calibration, rows in groups.values()]
