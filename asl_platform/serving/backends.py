"""What the HTTP app and the demo classify with: a ``Backend`` (a model's description, batched
classification, a health probe), either a model in this process (``LocalBackend``, for tests and
for running without Ray) or the model deployment through a Serve handle (``HandleBackend``).

``ImageClassifier`` is the model side that both run: decode a batch of uploads, one forward pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from asl_platform.data.decode import oriented_size
from asl_platform.hands.detect import no_hand_json
from asl_platform.hands.shapes import load_shapes
from asl_platform.limits import MAX_IMAGE_PIXELS
from asl_platform.model.calibration import Calibration
from asl_platform.model.confidence import answer_threshold
from asl_platform.serving.metrics import ServingMetrics
from asl_platform.serving.protocol import ApiError, decode_upload, prepare_image

if TYPE_CHECKING:
    from asl_platform.config import InferenceConfig
    from asl_platform.model import ModelCard

logger = logging.getLogger(__name__)


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a metric with nothing to measure, e.g. confident accuracy with no confident
    answer) as None: JSON has no NaN, and ``/v1/model`` must not fail on one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def describe_model(model_dir: Path, card: ModelCard) -> dict:
    """What ``/v1/model`` shows and every prediction names: which model, which weights, how good."""
    files = [model_dir / "model.safetensors"] + ([model_dir / "landmarks.safetensors"] if card.kind == "hand_aware" else [])
    digest = None
    if all(f.is_file() for f in files):
        sha = hashlib.sha256()
        for weights in files:
            with open(weights, "rb") as handle:  # streamed: no second weights-sized copy in memory
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(chunk)
        if card.fusion is not None:  # the same weights answering by another rule are another model
            sha.update(card.fusion.rule.encode())
        digest = sha.hexdigest()[:16]
    return {
        "name": model_dir.parent.name,
        "version": model_dir.name,
        "backbone": card.backbone,
        "classes": list(card.classes),
        "preprocessing": card.preprocessing.model_dump(mode="json"),
        "metrics": _json_safe(dict(card.metrics)),
        "kind": card.kind,
        "fusion": _json_safe(card.fusion.model_dump(mode="json")) if card.fusion else None,
        "confidence": _json_safe(card.confidence.model_dump(mode="json")) if card.confidence else None,
        "created": card.created,
        "sha256": digest,
    }


class Prediction(NamedTuple):
    """One classified image: class probabilities and, for a hand-aware model, the hand block
    (``found``, box, landmarks, handedness; None for an image-only model, which looks for no hand);
    ``calibrated`` when the person's calibration profile adapted the answer; ``source``: what answered, the
    whole model on a photo (``photo``) or the landmark model on a hand found elsewhere (``live``)."""

    probabilities: np.ndarray
    hand: dict | None = None
    calibrated: bool = False
    source: str = "photo"

    @property
    def answer(self) -> str:
        """Which of the card's thresholds applies (``confidence_threshold``): photo, live or calibrated."""
        return "calibrated" if self.calibrated else self.source


ImageInput = bytes | np.ndarray  # an encoded image, or uint8 pixels at the model's input size
Item = ImageInput | tuple[ImageInput, Calibration]  # with the calibration of the person in it
# A hand seen elsewhere (the browser): its landmark row (``hands.rows.landmark_inputs``: 21 x (x, y, z)
# in pixels, then handedness, 1 right), with the calibration of the person in it or without.
LandmarkItem = np.ndarray | tuple[np.ndarray, Calibration]


def confidence_threshold(info: dict, answer: str = "photo") -> float:
    """The probability at or above which ``answer`` (photo, live or calibrated: ``Prediction.answer``) is
    confident: the card's threshold for that answer, chosen at export on people the model was not trained on
    (``model.confidence.answer_threshold``)."""
    return answer_threshold(info.get("confidence"), answer)


def confident(info: dict, prediction: Prediction, probability: float | None = None) -> bool:
    """The one "not sure" rule of every route: ``prediction``'s top probability (or ``probability``, e.g. a
    mean over frames of the same answer) at or above its answer's threshold (``confidence_threshold``)."""
    top = float(np.max(prediction.probabilities)) if probability is None else probability
    return top >= confidence_threshold(info, prediction.answer)


class ImageClassifier:
    """Decodes and classifies a batch of uploads in one forward pass. A bad upload gets an error
    result (a dict: exceptions with custom fields do not survive pickling), never an exception, so
    one corrupt image cannot fail the other requests batched with it.

    Each model gets an upload decoded as its training images were: the image model at its input
    size, the hand detector (a hand-aware model) at up to ``DETECT_MAX_SIDE`` pixels; the hand
    block is then given in the pixels of the upload itself."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", max_pixels: int = MAX_IMAGE_PIXELS,
                 inference: InferenceConfig | None = None):
        from asl_platform.model import Predictor, resolve_model_dir  # torch: only where a model runs

        directory = resolve_model_dir(model_dir)
        self.predictor = Predictor(directory, device=device, inference=inference)
        shapes = load_shapes(directory)  # practice mode's typical hands; carried to the ingress with the description
        self.info = {**describe_model(directory, self.predictor.card), "runtime": self.predictor.runtime_name,
                     "hand_shapes": {name: shape.to_json() for name, shape in shapes.items()}}
        self.max_pixels = max_pixels
        self.metrics = ServingMetrics()

    def __call__(self, items: list[Item]) -> list[Prediction | dict]:
        prep, arrays, detection, sizes, results, calibrations = self.predictor.preprocessing, [], [], [], [], []
        hand_aware = self.predictor.hand_aware
        decoding = time.perf_counter()
        for item in items:
            item, calibration = item if isinstance(item, tuple) else (item, None)
            if calibration is not None and not hand_aware:
                results.append({"status": 422, "code": "calibration_unsupported", "message":
                                "calibration needs a hand-aware model (model.kind=hand_aware); this one reads images only"})
                continue
            try:
                if isinstance(item, np.ndarray):  # already at the model's input size
                    arrays.append(item)
                    detection.append(item)
                    sizes.append((item.shape[1], item.shape[0]))
                else:
                    arrays.append(prepare_image(item, prep, self.max_pixels))  # as training decodes it
                    if hand_aware:  # as the hands stage decodes it, and the size to report hands in
                        detection.append(np.asarray(decode_upload(item, self.max_pixels)))
                        sizes.append(oriented_size(item))
                calibrations.append(calibration)
                results.append(None)
            except ApiError as exc:
                results.append({"status": exc.status, **exc.to_dict()})
        self.metrics.observe("decode", time.perf_counter() - decoding)
        if not arrays:
            return results
        probabilities, hands = self._classify(np.stack(arrays), detection, calibrations)
        answers = iter(Prediction(p, _hand_block(hand, image, size) if hand_aware else None,
                                  calibration is not None and hand is not None)
                       for p, hand, image, size, calibration in zip(probabilities, hands, detection or arrays,
                                                                    sizes or arrays, calibrations))
        return [next(answers) if result is None else result for result in results]

    def classify_landmarks(self, items: list[LandmarkItem]) -> list[Prediction | dict]:
        """Hands found elsewhere (landmark rows, each maybe with its person's calibration) -> the landmark
        model's answer each (the calibrated one with a calibration), in one pass per calibration. An
        image-only model has no landmark model: every item gets an error result."""
        if not self.predictor.hand_aware:
            return [{"status": 422, "code": "landmarks_unsupported", "message": "answering from landmarks needs a "
                     "hand-aware model (model.kind=hand_aware); this one reads images only"} for _ in items]
        rows = np.stack([np.asarray(item[0] if isinstance(item, tuple) else item, np.float32) for item in items])
        calibrations = [item[1] if isinstance(item, tuple) else None for item in items]
        with self.metrics.timed("landmarks"):
            probabilities = self.predictor.predict_landmarks(rows)
            groups: dict[int, tuple[Calibration, list[int]]] = {}
            for row, calibration in enumerate(calibrations):
                if calibration is not None:
                    groups.setdefault(id(calibration), (calibration, []))[1].append(row)
            for calibration, positions in groups.values():
                probabilities[positions] = self.predictor.predict_calibrated(rows[positions], calibration,
                                                                             probabilities[positions])
        return [Prediction(p, None, calibration is not None, "live") for p, calibration in zip(probabilities, calibrations)]

    def _classify(self, batch: np.ndarray, detection: list[np.ndarray],
                  calibrations: list[Calibration | None]) -> tuple[np.ndarray, list]:
        """``Predictor.predict_uint8_with_hands``, one stage at a time so that each is timed."""
        predictor = self.predictor
        with self.metrics.timed("model"):
            image_probs = predictor.predict_uint8(batch)
        if not predictor.hand_aware:
            return image_probs, [None] * len(batch)
        with self.metrics.timed("hands"):
            hands = predictor.detect(detection)
        with self.metrics.timed("model"):
            return predictor.combine_with_hands(image_probs, hands, calibrations), hands


def _hand_block(hand, image: np.ndarray, size: tuple[int, int]) -> dict:
    """The /predict hand block, in the pixels of the upload as sent (EXIF rotation applied)."""
    if hand is None:
        return no_hand_json()
    height, width = image.shape[:2]
    return hand.scaled(size[0] / width, size[1] / height, size).to_json()


def as_result(result: Prediction | dict) -> Prediction | ApiError:
    """An ``ImageClassifier`` result as the app uses it: the prediction, or the ApiError it stands for."""
    return ApiError(result["status"], result["code"], result["message"]) if isinstance(result, dict) else result


def with_calibration(items: list, calibration: Calibration | None) -> list:
    """Each item paired with the person's calibration (as the model side reads them), or alone without one."""
    return list(items) if calibration is None else [(item, calibration) for item in items]


class Backend(Protocol):
    """What the HTTP app needs from a model: its description, batched classification (with one
    person's calibration, or none), and health."""

    info: dict

    async def classify(self, items: list[ImageInput], calibration: Calibration | None = None) -> list[Prediction | ApiError]: ...

    async def classify_landmarks(self, rows: list[np.ndarray],
                                 calibration: Calibration | None = None) -> list[Prediction | ApiError]:
        """Landmark rows (hands found elsewhere) -> the landmark model's answers (``ImageClassifier.classify_landmarks``)."""

    async def health(self) -> dict | None:
        """None when the model cannot answer; else the settings it runs with now (may be empty)."""


class LocalBackend:
    """A model in this process: for tests and for the demo without Ray."""

    def __init__(self, model_dir: str | Path, max_pixels: int = MAX_IMAGE_PIXELS, inference: InferenceConfig | None = None):
        self.classifier = ImageClassifier(model_dir, max_pixels=max_pixels, inference=inference)
        self.info = self.classifier.info

    async def classify(self, items: list[ImageInput], calibration: Calibration | None = None) -> list[Prediction | ApiError]:
        return [as_result(result) for result in
                await asyncio.to_thread(self.classifier, with_calibration(items, calibration))]

    async def classify_landmarks(self, rows: list[np.ndarray],
                                 calibration: Calibration | None = None) -> list[Prediction | ApiError]:
        return [as_result(result) for result in
                await asyncio.to_thread(self.classifier.classify_landmarks, with_calibration(rows, calibration))]

    async def health(self) -> dict | None:
        return {}  # no batching in-process


class HandleBackend:
    """The model deployment, through a Serve handle: one call per image, so ``@serve.batch``
    can batch images from different requests together."""

    def __init__(self, handle: Any, info: dict, attempts: int = 3):
        self.handle, self.info, self.attempts = handle, info, attempts

    async def _classify_one(self, item: Item | LandmarkItem, method: str = "classify") -> Prediction | ApiError:
        """Classification is idempotent, so a request caught on a replica that died is sent again
        (Serve routes it to a live or replacement replica): a crash costs latency, not answers."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        for attempt in range(1, self.attempts + 1):
            try:
                return as_result(await getattr(self.handle, method).remote(item))
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if attempt == self.attempts:
                    raise ApiError(503, "unavailable", "no model replica could answer; try again") from exc
                logger.warning("model replica lost (%s); retrying (%d/%d)", type(exc).__name__, attempt, self.attempts)
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def classify(self, items: list[ImageInput], calibration: Calibration | None = None) -> list[Prediction | ApiError]:
        return list(await asyncio.gather(*(self._classify_one(item) for item in with_calibration(items, calibration))))

    async def classify_landmarks(self, rows: list[np.ndarray],
                                 calibration: Calibration | None = None) -> list[Prediction | ApiError]:
        """One call per hand, so that ``@serve.batch`` batches hands from different requests together."""
        return list(await asyncio.gather(*(self._classify_one(item, "classify_landmarks")
                                           for item in with_calibration(rows, calibration))))

    async def health(self) -> dict | None:
        try:
            return await asyncio.wait_for(self.handle.batching.remote(), timeout=5)
        except Exception:  # a health check reports, it does not raise
            return None
