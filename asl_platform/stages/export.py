"""Stage export: the versioned model folder (weights, config, the held-out test files) and its card.
What a model exports with it is chosen on people the models were not trained on (``data.people``: each
group's images answered by the models of the fold that held it out, each group weighing the same), or on
the validation split (``data.validation=split``, or a single group): for a hand-aware model every fusion
rule (``model.fusion``) is scored there and the best one chosen, and the "not sure" thresholds
(``model.calibration``) are chosen there too; the card's ``validation`` records what and how. The
cross-domain folder is measured and recorded, never chosen on: a choice tuned to one folder of other people
does not carry over to the next person. Then the ONNX copies (``onnx_export``), and ``latest``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asl_platform.config import Config
from asl_platform.data.listing import ImageIndex, join_classes
from asl_platform.data.people import group_counts
from asl_platform.hands.detect import DetectionSettings
from asl_platform.hands.shapes import save_shapes, shapes_of
from asl_platform.model import (
    ASLClassifier,
    DataCard,
    ModelCard,
    build_backbone,
    into_classifier,
    mark_latest,
    next_version_dir,
    resolve_model_dir,
    save_model_dir,
    write_readme,
)
from asl_platform.model.calibration import calibrated_probabilities, fit_temperature, simulated_calibration
from asl_platform.model.confidence import TARGET_PRECISION, choose_threshold, confident_share
from asl_platform.model.card import (
    ConfidenceCard,
    DetectionCard,
    FusionCard,
    HandsCard,
    HeadCard,
    OnnxCard,
    ValidationCard,
)
from asl_platform.model.classifier import probabilities
from asl_platform.model.fusion import choose_rule, fuse, score_rules
from asl_platform.model.landmarks import landmark_probabilities, save_landmark_weights
from asl_platform.stages.evaluate import SplitAnswers
from asl_platform.stages.ingest import TEST_SPLIT_FILE, PreparedData
from asl_platform.stages.onnx_export import export_onnx
from asl_platform.training.search import searched_values

logger = logging.getLogger(__name__)


def _embedding(landmark_model: nn.Module):
    def embed(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return landmark_model.eval().embed(torch.from_numpy(np.asarray(rows, np.float32))).numpy()

    return embed


def confidence_card(answers: np.ndarray, chosen: SplitAnswers, chosen_on: str) -> ConfidenceCard:
    """The "not sure" threshold of each answer the model gives, on the images it is chosen on (``chosen``:
    held-out people, or the validation split; ``model.calibration``): the photo answer (``answers``, the
    fusion rule's), and for a hand-aware model the live answer (the landmark model on a hand found) and the
    calibrated answer, in a simulated calibration (``SIMULATED_SHOTS`` shots per letter of each held-out
    person, or folder, by the landmark model that answered them) that also fits the calibration's temperature."""
    threshold, precision, coverage = choose_threshold(answers, chosen.labels, chosen.weights)
    card = {"threshold": threshold, "target_precision": TARGET_PRECISION, "precision": precision, "coverage": coverage,
            "chosen_on": chosen_on}
    if chosen.landmark_models and chosen.found.any():
        found = np.flatnonzero(chosen.found)
        weights = None if chosen.weights is None else chosen.weights[found]
        live = choose_threshold(chosen.landmarks[found], chosen.labels[found], weights)
        card.update(live_threshold=live[0], live_precision=live[1], live_coverage=live[2])
        embeds = {group: _embedding(model) for group, model in enumerate(chosen.landmark_models) if model is not None}
        found = found[np.isin(chosen.groups[found], list(embeds))]
        distances, labels_, positions = simulated_calibration(embeds, chosen.inputs[found], chosen.labels[found],
                                                              chosen.groups[found], chosen.image.shape[1])
        if len(labels_):
            model_answers = chosen.landmarks[found][positions]
            simulated_weights = None if chosen.weights is None else chosen.weights[found][positions]
            temperature = fit_temperature(distances, labels_, model_answers, simulated_weights)
            calibrated = choose_threshold(calibrated_probabilities(model_answers, distances, temperature), labels_,
                                          simulated_weights)
            card.update(temperature=temperature, calibrated_threshold=calibrated[0], calibrated_precision=calibrated[1],
                        calibrated_coverage=calibrated[2])
    result = ConfidenceCard(**card)
    logger.info("confident at probability >= %.2f (%.1f%% right, %.1f%% of answers on the %s)%s%s", result.threshold,
                100 * result.precision, 100 * result.coverage, chosen_on,
                f"; live answers at >= {result.live_threshold:.2f} ({100 * result.live_precision:.1f}% right, "
                f"{100 * result.live_coverage:.1f}%)" if result.live_threshold is not None else "",
                f"; calibrated answers (temperature {result.temperature:.3g}) in a simulated calibration at >= "
                f"{result.calibrated_threshold:.2f}: {100 * result.calibrated_precision:.1f}% right, "
                f"{100 * result.calibrated_coverage:.1f}%" if result.temperature is not None else "")
    return result


@dataclass
class CrossDomain:
    """Both models' answers on a cross-domain folder, for every readable image of a known class."""

    root: str
    classes: list[str]
    paths: list[str]
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
            if self.found.any():  # what the live tabs answer: the landmark model, on a hand found
                metrics["cross_domain_accuracy_live"] = float(np.mean(self.landmarks[self.found].argmax(axis=1)
                                                                      == self.labels[self.found]))
        return metrics


def score_cross_domain(card: ModelCard, prepared: PreparedData, index: ImageIndex, image_model: nn.Module,
                       landmark_model: nn.Module | None) -> CrossDomain:
    """The trained image model on the folder's backbone features (or trunk activations) and, for a
    hand-aware run, the landmark model on its hands: both computed by the features and hands stages
    (``prepared.cross_table``, ``cross_hands``); classes joined by name, unknown ones left out."""
    paths, labels, unknown = join_classes(index, card.classes)
    if unknown:
        logger.warning("cross-domain: leaving out %d image(s) of classes the model does not know", sum(unknown.values()))
    table = prepared.cross_table
    position = {str(path): i for i, path in enumerate(table.paths)}
    rows = np.asarray([position[path] for path in paths], dtype=np.int64)
    good = table.valid[rows]
    image = np.zeros((len(labels), len(card.classes)), np.float32)
    image[good] = probabilities(image_model, table.features[rows[good]], len(card.classes))
    found = np.zeros(len(labels), dtype=bool)
    landmarks = np.zeros_like(image)
    if landmark_model is not None:
        hands = prepared.cross_hands.in_order(paths)
        good &= hands.valid
        found = hands.found & good
        landmarks = landmark_probabilities(landmark_model, hands.inputs(), found, len(card.classes))
    logger.info("cross-domain %s: %d readable image(s) of known classes%s", index.root, int(good.sum()),
                f", hand found in {found[good].mean():.1%}" if landmark_model is not None and good.any() else "")
    return CrossDomain(str(index.root), list(card.classes), [p for p, ok in zip(paths, good) if ok], labels[good],
                       image[good], landmarks[good], found[good], hand_aware=landmark_model is not None)


def export_shapes(prepared: PreparedData, model_dir: Path) -> dict[str, int]:
    """Each letter's typical hand shape in the training split (``hands.shapes``, what practice mode
    teaches from), written beside the model; returns how many hands each came from."""
    rows = (np.asarray(prepared.index.splits) == "train") & prepared.hands.valid & prepared.hands.found
    shapes = shapes_of(prepared.hands.inputs(rows), prepared.hands.labels[rows], prepared.index.classes)
    save_shapes(shapes, model_dir)
    return {name: shape.images for name, shape in shapes.items()}


def validation_set(prepared: PreparedData) -> str:
    """What a choice is made on, and how it is counted: the words the card records."""
    if prepared.people:
        groups = len(set(prepared.index.groups))
        return (f"held-out people: each of the {groups} groups of the training folders answered by models trained "
                "without it, each group weighing the same")
    if prepared.balance_sources and len(prepared.sources) > 1:
        return f"validation split, each of the {len(prepared.sources)} training folders weighing the same"
    return "validation split"


def validation_card(cfg: Config, prepared: PreparedData, chosen: SplitAnswers, rule: str) -> ValidationCard:
    """What the choices were made on, the groups of people, and the exported answer there (per held-out group)."""
    classes = prepared.index.classes
    note = ""
    if cfg.data.validation == "people" and not prepared.people:
        note = "one group of people in the training folders (no file name names a person): nobody to hold out"
    per_group = {}
    if prepared.people:
        right = chosen.answers(rule, classes).argmax(axis=1) == chosen.labels
        per_group = {chosen.group_names[group]: float(right[chosen.groups == group].mean())
                     for group in np.unique(chosen.groups)}
    return ValidationCard(mode="people" if prepared.people else "split", chosen_on=validation_set(prepared),
                          groups=group_counts(prepared.index.groups), note=note,
                          accuracy=chosen.weighted_accuracy(rule, classes), per_group=per_group)


def make_hand_aware(card: ModelCard, cfg: Config, landmark_cfg: Config, prepared: PreparedData,
                    answers: dict[str, SplitAnswers], cross: CrossDomain | None) -> ModelCard:
    """The card of the exported hand-aware model: the rule chosen on held-out people or the validation split
    (never on the cross-domain folder, which is only measured), every rule's score, the "not sure"
    thresholds, the detection settings and rates; ``test_accuracy`` becomes the chosen rule's (the image model's own
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
    confidence = confidence_card(val.answers(rule, classes), val, selected_on)
    test_rows = np.asarray(prepared.index.splits) == "test"
    hands_card = HandsCard(
        detection=DetectionCard.of(DetectionSettings.of(cfg.hands)),
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
    metrics["val_accuracy"] = (answers["val"].weighted_accuracy if prepared.people else answers["val"].accuracy)(rule, classes)
    found = prepared.hands.found[test_rows & prepared.hands.valid]
    metrics["test_hand_found"] = float(found.mean()) if len(found) else float("nan")
    return ModelCard.model_validate({
        **card.model_dump(), "kind": "hand_aware", "hands": hands_card.model_dump(), "metrics": metrics,
        "fusion": FusionCard(rule=rule, selected_on=selected_on, scores=scores,
                             cross_domain_scores=cross_scores).model_dump(),
        "confidence": confidence.model_dump(),
    })


def latest_made_from(cfg: Config, inputs: str) -> tuple[Path, ModelCard] | None:
    """The latest model of ``run.name`` when it was made from ``inputs`` (``stages.ingest.inputs_key``): what a
    re-run of the same pipeline on the same files would train again."""
    try:
        directory = resolve_model_dir(cfg.models_dir.resolve())
        card = ModelCard.load(directory)
    except (FileNotFoundError, OSError, ValueError) as exc:  # no model yet, or one this code cannot read
        logger.debug("no model to reuse: %s", exc)
        return None
    return (directory, card) if card.inputs_sha256 == inputs else None


def export_version(cfg: Config, model: ASLClassifier, prepared: PreparedData, **card_fields) -> tuple[Path, ModelCard]:
    """Claim ``<models>/<run.name>/v<N>`` and write the model, its config and its exact held-out test
    files (so `evaluate --split test` never re-derives the split). ``latest`` is moved by the caller,
    last, once everything else in the folder is written."""
    version_dir = next_version_dir(cfg.models_dir.resolve())
    data = DataCard(root=prepared.root if not prepared.sources else None, sources=prepared.sources,
                    layout=prepared.index.layout, split=prepared.split_counts,
                    smoke_set=cfg.data.root is None, skipped_files=prepared.skipped)
    card = save_model_dir(model, version_dir, prepared.index.classes, version=version_dir.name,
                          weights=cfg.model.weights, data=data, config=cfg.model_dump(mode="json"),
                          inputs_sha256=prepared.inputs, **card_fields)
    (version_dir / "config.yaml").write_text(cfg.to_yaml())
    (version_dir / TEST_SPLIT_FILE).write_text("\n".join(prepared.index.subset("test").paths) + "\n")
    return version_dir, card


def export_runtimes(cfg: Config, model_dir: Path, model: ASLClassifier, card: ModelCard, prepared: PreparedData,
                    image_model: nn.Module, kind: str, cross: CrossDomain | None) -> OnnxCard:
    """``model.onnx`` and ``model.int8.onnx`` beside the weights, scored on the held-out test split and the
    cross-domain folder against torch's answers, which the run already has: the trained model on the cached
    features (``onnx_export`` decodes each image once, for the two ONNX files only)."""
    rows = prepared.rows("test")
    arrays = prepared.activations if kind == "activations" else prepared.features
    torch_top1 = probabilities(image_model, arrays("test")[0], len(card.classes)).argmax(1)
    by_path = dict(zip(prepared.table.paths[rows], torch_top1))
    paths, labels, _ = join_classes(prepared.readable("test"), card.classes)
    keep = [i for i, path in enumerate(paths) if path in by_path]  # readable by both stages
    sets = {"test": ([paths[i] for i in keep], labels[keep], np.asarray([by_path[paths[i]] for i in keep]))}
    if cross is not None:
        sets["cross_domain"] = (cross.paths, cross.labels, cross.image.argmax(1))
    return export_onnx(model_dir, model, card, prepared.readable("train").paths, sets, cfg.inference,
                       batch_size=cfg.data.batch_size, max_bytes=cfg.data.max_image_bytes, seed=cfg.data.seed)


def export_model(cfg: Config, best: Config, best_landmarks: Config | None, prepared: PreparedData, retrained,
                 metrics: dict, answers: dict[str, SplitAnswers], cross_index: ImageIndex | None, kind: str) -> tuple[Path, ModelCard]:
    """Stage export: the versioned model folder with its card (the fusion rule and "not sure" threshold
    chosen on the validation split, the cross-domain folder measured), the ONNX copies checked against
    torch, and ``latest`` moved to it last."""
    trained, landmarks = retrained.image, retrained.landmarks
    if kind == "activations":  # the trained last stage goes into the pretrained backbone
        classifier = into_classifier(cfg.model.backbone, cfg.model.weights, trained.model)
    else:
        classifier = ASLClassifier(cfg.model.backbone, build_backbone(cfg.model.backbone, cfg.model.weights),
                                   trained.model)
    # Versioned like `train`'s exports, so serve/predict-batch/evaluate take <models>/<run.name> (its latest).
    model_dir, card = export_version(best, classifier, prepared, metrics=metrics, checkpoint=trained.checkpoint_path)
    cross = score_cross_domain(card, prepared, cross_index, trained.model, landmarks and landmarks.model) \
        if cross_index else None
    if landmarks is not None:
        card = make_hand_aware(card, cfg, best_landmarks, prepared, answers, cross)
        save_landmark_weights(landmarks.model, model_dir)
        card.hands.shapes = export_shapes(prepared, model_dir)
    else:
        card.confidence = confidence_card(answers["val"].image, answers["val"], validation_set(prepared))
    rule = card.fusion.rule if card.fusion else "image"
    card.validation = validation_card(cfg, prepared, answers["val"], rule)
    if prepared.people:
        card.metrics["val_people_groups"] = len(card.validation.per_group)
    if prepared.people:
        logger.info("the exported answer on held-out people (each by models trained without them): %.2f%% (%s)",
                    100 * card.validation.accuracy, ", ".join(f"{g} {v:.1%}" for g, v in card.validation.per_group.items()))
    if cross is not None:
        card.metrics.update(cross.metrics(rule, card.confidence.threshold))
    card.onnx = export_runtimes(cfg, model_dir, classifier, card, prepared, trained.model, kind, cross)
    card.save(model_dir)
    write_readme(model_dir, card)
    mark_latest(model_dir)  # last: `latest` only ever names a complete model
    return model_dir, card
