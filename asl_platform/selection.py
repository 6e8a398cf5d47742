"""What a hand-aware pipeline exports: every fusion rule (``model.fusion``) scored on the same
images, and the best one chosen on the cross-domain folder when there is one (what a new user
meets), else on the validation split, never on in-domain test accuracy. The card records why.
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
from asl_platform.evaluate import predict_paths
from asl_platform.hands import detect_hands
from asl_platform.hands.detect import mediapipe_version
from asl_platform.hands.shapes import save_shapes, shapes_of
from asl_platform.model import ModelCard
from asl_platform.model.card import DetectionCard, FusionCard, HandsCard, HeadCard
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


def fusion_scores(prepared: PreparedData, image_model: nn.Module, landmark_model: nn.Module, split: str) -> dict[str, float]:
    """Accuracy of every rule on all readable images of ``split`` (no hand found counts too)."""
    rows = (np.asarray(prepared.index.splits) == split) & prepared.table.valid & prepared.hands.valid
    classes = prepared.index.classes
    image = probabilities(image_model, prepared.table.features[rows], len(classes))
    found = prepared.hands.found[rows]
    landmarks = _landmark_probabilities(landmark_model, prepared.hands.inputs(rows), found, len(classes))
    return score_rules(image, landmarks, found, prepared.hands.labels[rows], classes)


@dataclass
class CrossDomain:
    """Both models' answers on a cross-domain folder, for every readable image of a known class."""

    root: str
    classes: list[str]
    labels: np.ndarray
    image: np.ndarray
    landmarks: np.ndarray
    found: np.ndarray

    def scores(self) -> dict[str, float]:
        return score_rules(self.image, self.landmarks, self.found, self.labels, self.classes)

    def metrics(self, rule: str) -> dict[str, float | int]:
        answer = fuse(rule, self.image, self.landmarks, self.found, self.classes).argmax(axis=1)
        metrics: dict[str, float | int] = {
            "cross_domain_accuracy": float(np.mean(answer == self.labels)), "cross_domain_images": int(len(self.labels)),
        }
        if rule != "image":
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
    return CrossDomain(str(index.root), list(card.classes), labels[good], image[good], landmarks[good], found[good])


def export_shapes(prepared: PreparedData, model_dir: Path) -> dict[str, int]:
    """Each letter's typical hand shape in the training split (``hands.shapes``, what practice mode
    teaches from), written beside the model; returns how many hands each came from."""
    rows = (np.asarray(prepared.index.splits) == "train") & prepared.hands.valid & prepared.hands.found
    shapes = shapes_of(prepared.hands.inputs(rows), prepared.hands.labels[rows], prepared.index.classes)
    save_shapes(shapes, model_dir)
    return {name: shape.images for name, shape in shapes.items()}


def make_hand_aware(card: ModelCard, cfg: Config, landmark_cfg: Config, prepared: PreparedData,
                    split_scores: dict[str, dict[str, float]], cross: CrossDomain | None) -> ModelCard:
    """The card of the exported hand-aware model: the rule chosen (cross-domain score, else
    validation), every rule's score, the detection settings and rates; ``test_accuracy`` becomes
    the chosen rule's (the image model's own numbers keep an ``_image`` suffix)."""
    if cross is not None and len(cross.labels):
        scores, selected_on = cross.scores(), f"cross-domain folder {cross.root} ({len(cross.labels)} images)"
    else:
        if cross is not None:
            logger.warning("no readable image of a known class in %s: choosing the fusion rule on the validation "
                           "split instead", cross.root)
        scores, selected_on = split_scores["val"], "validation split (no data.cross_domain_root given)"
    rule = choose_rule(scores)
    logger.info("fusion rules on the %s: %s -> exporting %r", selected_on,
                ", ".join(f"{r} {v:.2%}" for r, v in scores.items()), rule)
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
    metrics["test_accuracy"] = split_scores["test"][rule]
    metrics["val_accuracy_image"] = metrics.pop("val_accuracy")
    metrics["val_loss_image"] = metrics.pop("val_loss")
    metrics["val_accuracy"] = split_scores["val"][rule]
    found = prepared.hands.found[test_rows & prepared.hands.valid]
    metrics["test_hand_found"] = float(found.mean()) if len(found) else float("nan")
    return ModelCard.model_validate({
        **card.model_dump(), "kind": "hand_aware", "hands": hands_card.model_dump(), "metrics": metrics,
        "fusion": FusionCard(rule=rule, selected_on=selected_on, scores=scores).model_dump(),
    })
