"""What a hand-aware pipeline exports: every fusion rule (``model.fusion``) scored on the validation
split (each training folder weighing the same), the best one chosen there, and the "not sure"
thresholds (``model.calibration``) chosen there too. The cross-domain folder is measured and
recorded, never chosen on: a choice tuned to one folder of other people does not carry over to the
next person. The card records why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asl_platform.config import Config
from asl_platform.data import ImageIndex
from asl_platform.inference import predict_paths
from asl_platform.hands import detect_hands
from asl_platform.hands.detect import mediapipe_version
from asl_platform.hands.shapes import save_shapes, shapes_of
from asl_platform.model import ModelCard
from asl_platform.model.calibration import (
    TARGET_PRECISION, choose_threshold, confident_share, distance_probabilities, fit_temperature, simulated_calibration,
)
from asl_platform.model.card import ConfidenceCard, DetectionCard, FusionCard, HandsCard, HeadCard
from asl_platform.model.fusion import choose_rule, fuse, score_rules
from asl_platform.prepare import PreparedData, detection_settings, hands_cache
from asl_platform.training.search import searched_values

logger = logging.getLogger(__name__)


@torch.inference_mode()
def probabilities(model: nn.Module, inputs: np.ndarray, num_classes: int, batch_size: int = 256) -> np.ndarray:
    """Softmax of ``model`` over in-memory inputs (cached features, activations or landmark rows)."""
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32))), 1)
           for i in range(0, len(inputs), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), np.float32)


def _landmark_probabilities(model: nn.Module, inputs: np.ndarray, found: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(inputs), num_classes), np.float32)
    if found.any():
        out[found] = probabilities(model, inputs[found], num_classes)
    return out


@dataclass
class SplitAnswers:
    """Both models' answers on a split's readable images, hand found or not, and what each image counts
    for when scoring: every training folder the same (``data.balance_sources``), else every image."""

    image: np.ndarray
    landmarks: np.ndarray
    found: np.ndarray
    labels: np.ndarray
    inputs: np.ndarray  # the landmark rows (zeros where no hand was found)
    sources: np.ndarray  # which training folder each image is from
    weights: np.ndarray | None

    def scores(self, classes: list[str]) -> dict[str, float]:
        return score_rules(self.image, self.landmarks, self.found, self.labels, classes, self.weights)

    def answers(self, rule: str, classes: list[str]) -> np.ndarray:
        return fuse(rule, self.image, self.landmarks, self.found, classes)

    def accuracy(self, rule: str, classes: list[str], source: int | None = None) -> float:
        """Plain accuracy under ``rule`` (every image counts once), of one training folder's images or all."""
        keep = np.ones(len(self.labels), bool) if source is None else self.sources == source
        right = self.answers(rule, classes)[keep].argmax(axis=1) == self.labels[keep]
        return float(right.mean()) if len(right) else float("nan")


def split_answers(prepared: PreparedData, image_model: nn.Module, landmark_model: nn.Module, split: str) -> SplitAnswers:
    rows = prepared.rows(split) & prepared.hands.valid
    classes = prepared.index.classes
    image = probabilities(image_model, prepared.table.features[rows], len(classes))  # features or activations
    found = prepared.hands.found[rows]
    inputs = prepared.hands.inputs(rows)
    sources = np.asarray(prepared.index.sources or [0] * len(prepared.index), dtype=np.int64)[rows]
    return SplitAnswers(image, _landmark_probabilities(landmark_model, inputs, found, len(classes)), found,
                        prepared.hands.labels[rows], inputs, sources, prepared.weights_of(rows))


def confidence_card(answers: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, chosen_on: str,
                    landmark_model: nn.Module | None = None, hands: SplitAnswers | None = None) -> ConfidenceCard:
    """The "not sure" threshold, chosen on the validation split for the model's own ``answers``
    (``model.calibration``); for a hand-aware model also the temperature that puts calibrated answers on
    the same scale, fitted on a simulated calibration (``SIMULATED_SHOTS`` shots per letter of each
    folder), and how the threshold does there."""
    threshold, precision, coverage = choose_threshold(answers, labels, weights)
    card = {"threshold": threshold, "target_precision": TARGET_PRECISION, "precision": precision, "coverage": coverage,
            "chosen_on": chosen_on}
    if landmark_model is not None and hands is not None and hands.found.any():
        found = np.flatnonzero(hands.found)

        def embed(rows: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return landmark_model.eval().embed(torch.from_numpy(np.asarray(rows, np.float32))).numpy()

        distances, labels_, positions = simulated_calibration(embed, hands.inputs[found], hands.labels[found],
                                                              hands.sources[found], hands.image.shape[1])
        if len(labels_):
            temperature = fit_temperature(distances, labels_)
            simulated_weights = None if hands.weights is None else hands.weights[found][positions]
            kept = confident_share(distance_probabilities(distances, temperature), labels_, simulated_weights, threshold)
            card.update(temperature=temperature, calibrated_precision=kept[0], calibrated_coverage=kept[1])
    result = ConfidenceCard(**card)
    logger.info("confident at probability >= %.2f (%.1f%% right, %.1f%% of answers on the %s)%s", result.threshold,
                100 * result.precision, 100 * result.coverage, chosen_on,
                f"; calibrated answers (temperature {result.temperature:.3g}) in a simulated calibration: "
                f"{100 * result.calibrated_precision:.1f}% right, {100 * result.calibrated_coverage:.1f}%"
                if result.temperature is not None else "")
    return result


@dataclass
class CrossDomain:
    """Both models' answers on a cross-domain folder, for every readable image of a known class."""

    root: str
    classes: list[str]
    labels: np.ndarray
    image: np.ndarray
    landmarks: np.ndarray
    found: np.ndarray
    hand_aware: bool = True  # False: no landmark model, ``landmarks`` and ``found`` are empty

    def scores(self) -> dict[str, float]:
        return score_rules(self.image, self.landmarks, self.found, self.labels, self.classes)

    def metrics(self, rule: str, threshold: float | None = None) -> dict[str, float | int]:
        fused = fuse(rule, self.image, self.landmarks, self.found, self.classes)
        answer = fused.argmax(axis=1)
        metrics: dict[str, float | int] = {
            "cross_domain_accuracy": float(np.mean(answer == self.labels)), "cross_domain_images": int(len(self.labels)),
        }
        if threshold is not None:  # the honest "not sure": how right the confident answers are, and how many
            confident = fused.max(axis=1) >= threshold
            metrics["cross_domain_confident_accuracy"] = float(np.mean(answer[confident] == self.labels[confident])) \
                if confident.any() else float("nan")
            metrics["cross_domain_coverage"] = float(confident.mean())
        if self.hand_aware:  # whichever rule won: the image model's share and MediaPipe's, for the record
            metrics["cross_domain_accuracy_image"] = float(np.mean(self.image.argmax(axis=1) == self.labels))
            metrics["cross_domain_hand_found"] = float(self.found.mean())
        return metrics


def score_cross_domain(cfg: Config, model_dir: Path, card: ModelCard, index: ImageIndex,
                       landmark_model: nn.Module | None) -> CrossDomain:
    """The exported image model (through ``predict_paths``) and, for a hand-aware run, the hands
    stage and the landmark model on ``index``; classes joined by name, unknown ones left out."""
    position = {name: i for i, name in enumerate(card.classes)}
    unknown = [p for p, y in zip(index.paths, index.labels) if index.classes[y] not in position]
    if unknown:
        logger.warning("cross-domain: leaving out %d image(s) of classes the model does not know", len(unknown))
    known = index.without(unknown)
    labels = np.asarray([position[known.classes[y]] for y in known.labels], dtype=np.int64)
    image, errors = predict_paths(model_dir, known.paths, batch_size=cfg.data.batch_size,
                                  max_bytes=cfg.data.max_image_bytes, use_gpu=cfg.train.use_gpu,
                                  inference=cfg.inference.model_copy(update={"runtime": "torch"}))
    good = np.asarray([not e for e in errors], dtype=bool)
    found = np.zeros(len(labels), dtype=bool)
    landmarks = np.zeros_like(image)
    if landmark_model is not None:
        hands = detect_hands(known, detection_settings(cfg), hands_cache(cfg), cfg.data.batch_size,
                             max_bytes=cfg.data.max_image_bytes)
        good &= hands.valid
        found = hands.found & good
        landmarks = _landmark_probabilities(landmark_model, hands.inputs(), found, len(card.classes))
    logger.info("cross-domain %s: %d readable image(s) of known classes%s", index.root, int(good.sum()),
                f", hand found in {found[good].mean():.1%}" if landmark_model is not None and good.any() else "")
    return CrossDomain(str(index.root), list(card.classes), labels[good], image[good], landmarks[good], found[good],
                       hand_aware=landmark_model is not None)


def export_shapes(prepared: PreparedData, model_dir: Path) -> dict[str, int]:
    """Each letter's typical hand shape in the training split (``hands.shapes``, what practice mode
    teaches from), written beside the model; returns how many hands each came from."""
    rows = (np.asarray(prepared.index.splits) == "train") & prepared.hands.valid & prepared.hands.found
    shapes = shapes_of(prepared.hands.inputs(rows), prepared.hands.labels[rows], prepared.index.classes)
    save_shapes(shapes, model_dir)
    return {name: shape.images for name, shape in shapes.items()}


def validation_set(prepared: PreparedData) -> str:
    """How the validation split is counted when choosing: the words the card records."""
    if prepared.balance_sources and len(prepared.sources) > 1:
        return f"validation split, each of the {len(prepared.sources)} training folders weighing the same"
    return "validation split"


def make_hand_aware(card: ModelCard, cfg: Config, landmark_cfg: Config, prepared: PreparedData,
                    answers: dict[str, SplitAnswers], cross: CrossDomain | None, landmark_model: nn.Module) -> ModelCard:
    """The card of the exported hand-aware model: the rule chosen on the validation split (never on the
    cross-domain folder, which is only measured), every rule's score, the "not sure" thresholds, the
    detection settings and rates; ``test_accuracy`` becomes the chosen rule's (the image model's own
    numbers keep an ``_image`` suffix)."""
    classes = prepared.index.classes
    scores, selected_on = answers["val"].scores(classes), validation_set(prepared)
    rule = choose_rule(scores)
    logger.info("fusion rules on the %s: %s -> exporting %r", selected_on,
                ", ".join(f"{r} {v:.2%}" for r, v in scores.items()), rule)
    cross_scores = cross.scores() if cross is not None and len(cross.labels) else {}
    if cross_scores:
        logger.info("fusion rules on the cross-domain folder %s (measured, not chosen on): %s", cross.root,
                    ", ".join(f"{r} {v:.2%}" for r, v in cross_scores.items()))
    val = answers["val"]
    confidence = confidence_card(val.answers(rule, classes), val.labels, val.weights, selected_on, landmark_model, val)
    test_rows = np.asarray(prepared.index.splits) == "test"
    detection = detection_settings(cfg)
    hands_card = HandsCard(
        detection=DetectionCard(paddings=list(detection.paddings), min_confidence=detection.min_confidence,
                                model_complexity=detection.model_complexity, mediapipe=mediapipe_version()),
        head=HeadCard(hidden_size=landmark_cfg.model.hidden_size, dropout=landmark_cfg.model.dropout),
        augment={k: float(v) for k, v in landmark_cfg.hands.model_dump().items() if k.startswith("augment_")},
        searched=searched_values(landmark_cfg.model_dump()),
        detection_rate={k: v for k, v in prepared.hands.detection_rates(prepared.index.classes, test_rows).items()
                        if not np.isnan(v)},
    )
    metrics = dict(card.metrics)
    metrics["test_accuracy_image"] = metrics.pop("test_accuracy")
    metrics["test_loss_image"] = metrics.pop("test_loss")
    metrics["test_accuracy"] = answers["test"].accuracy(rule, classes)
    for number, source in enumerate(prepared.sources):  # e.g. the one-signer folder's own test split
        metrics[f"test_accuracy_{Path(source['root']).name}"] = answers["test"].accuracy(rule, classes, number)
    metrics["val_accuracy_image"] = metrics.pop("val_accuracy")
    metrics["val_loss_image"] = metrics.pop("val_loss")
    metrics["val_accuracy"] = answers["val"].accuracy(rule, classes)
    found = prepared.hands.found[test_rows & prepared.hands.valid]
    metrics["test_hand_found"] = float(found.mean()) if len(found) else float("nan")
    return ModelCard.model_validate({
        **card.model_dump(), "kind": "hand_aware", "hands": hands_card.model_dump(), "metrics": metrics,
        "fusion": FusionCard(rule=rule, selected_on=selected_on, scores=scores,
                             cross_domain_scores=cross_scores).model_dump(),
        "confidence": confidence.model_dump(),
    })
