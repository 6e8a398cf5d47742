"""The model card: one typed record of what a model folder holds (``model.json``), read and written
only here, and rendered for people as the folder's ``README.md``.

Every reader (loading, serving, batch inference, evaluation, warm starts) takes a ``ModelCard``, so
a field is spelled once and a folder written by an older version is upgraded on load (or refused
with a clear error when it is newer than this code).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from asl_platform.data.decode import Preprocessing
from asl_platform.errors import UserError
from asl_platform.hands.detect import DetectionSettings, mediapipe_version

CARD_FILE = "model.json"
# 7: onnx.quantization_images (was calibration_images); 6: the live and calibrated thresholds and the product rule's
# temperature; 5: validation (what was chosen on: held-out people); 4: confidence (the "not sure" thresholds),
# fusion.cross_domain_scores; 3: hand-aware models (kind, hands, fusion) and ONNX files (onnx); every older format is
# upgraded on load
FORMAT_VERSION = 7  # 7: onnx.calibration_images renamed quantization_images


class ModelCardError(UserError):
    """A ``model.json`` that cannot be read: not JSON, a format from a newer asl-platform, or a field wrong."""


class _Record(BaseModel):
    # NaN metrics (e.g. no test images) are written as NaN, which json.loads reads back, not as null.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class PreprocessingCard(_Record):
    """What serving and batch inference must do to an image before the model sees it."""

    image_size: int = Field(ge=1)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size, self.mean, self.std)

    @classmethod
    def of(cls, prep: Preprocessing) -> PreprocessingCard:
        return cls(image_size=prep.image_size, mean=prep.mean, std=prep.std)


class HeadCard(_Record):
    hidden_size: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class SourceCard(_Record):
    """One of several training folders: how many images it gave and how they were split."""

    root: str
    images: int = Field(ge=0)
    split: dict[str, int] = Field(default_factory=dict)


class DataCard(_Record):
    """Where the training images came from and how they were split (``sources`` when several folders)."""

    root: str | None = None
    sources: list[SourceCard] = Field(default_factory=list)
    layout: str | None = None
    split: dict[str, int] = Field(default_factory=dict)
    smoke_set: bool = False
    skipped_files: int = 0


class ValidationCard(_Record):
    """What every choice was made on (``data.validation``, ``asl_platform.data.people``): when each model's
    training stopped, the search's best trial, the fusion rule, the "not sure" threshold and the calibration
    temperature."""

    mode: Literal["people", "split"] = Field(description="'people': each group of the training folders held out in "
                                             "turn; 'split': a random validation split of the same folders")
    chosen_on: str = Field(description="the images every choice was made on, and how they were counted")
    groups: dict[str, int] = Field(default_factory=dict, description="training images per group: a person named by "
                                   "the file names (data.person_pattern), else a folder")
    note: str = Field(default="", description="why the mode is what it is where it is not what was asked for")
    accuracy: float | None = Field(default=None, description="the exported answer there (each group weighing the same)")
    per_group: dict[str, float] = Field(default_factory=dict, description="people mode: the exported answer's "
                                        "accuracy on each held-out group, by the models trained without it")


class DetectionCard(_Record):
    """MediaPipe Hands as it ran on the training images: serving must detect the same way."""

    paddings: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1)
    min_confidence: float = Field(gt=0, le=1)
    model_complexity: int = Field(ge=0, le=1)
    mediapipe: str

    @classmethod
    def of(cls, settings: DetectionSettings) -> DetectionCard:
        return cls(**settings.to_dict(), mediapipe=mediapipe_version())

    def settings(self) -> DetectionSettings:
        """The detector settings this card records."""
        return DetectionSettings(tuple(self.paddings), self.min_confidence, self.model_complexity)


class HandsCard(_Record):
    """The landmark model beside the image model (``landmarks.safetensors``)."""

    detection: DetectionCard
    head: HeadCard
    augment: dict[str, float] = Field(default_factory=dict, description="training augmentation, for the record")
    searched: dict[str, float | int] = Field(default_factory=dict, description="the landmark search's chosen values")
    detection_rate: dict[str, float] = Field(default_factory=dict, description="hand found, per class, on the test split")
    shapes: dict[str, int] = Field(default_factory=dict, description="letters with a typical hand shape in "
                                   "hand_shapes.json (practice mode), and how many training hands each is from")


class FusionCard(_Record):
    """Which combination of the two models answers, and why it was chosen."""

    rule: Literal["image", "landmarks|nothing", "landmarks|image", "average|image"]
    selected_on: str = Field(description="what the rules were scored on (the validation split; models before "
                                         "format 4: the cross-domain folder when there was one)")
    scores: dict[str, float] = Field(default_factory=dict, description="accuracy of every rule on that set")
    cross_domain_scores: dict[str, float] = Field(default_factory=dict, description="every rule on the cross-domain "
                                                  "folder, for the record (never used to choose)")


class ConfidenceCard(_Record):
    """When an answer counts as confident ("not sure" below): a threshold for each answer the model gives,
    chosen on data the model was not trained on (``asl_platform.model.calibration``)."""

    threshold: float = Field(ge=0, le=1, description="the photo answer (the fusion rule's): confident at or above this "
                                                     "probability")
    target_precision: float = Field(gt=0, le=1, description="what the threshold was chosen for: the share of confident "
                                                            "answers that are right")
    chosen_on: str = Field(description="the data the thresholds were chosen on, and how")
    precision: float = Field(description="the share of confident answers right there")
    coverage: float = Field(description="the share of answers confident there")
    live_threshold: float | None = Field(default=None, ge=0, le=1, description="the live answer (the landmark model "
                                         "alone, on a hand found: the webcam tabs, POST /v1/landmarks); None: format < 6 "
                                         "or an image-only model, the photo threshold applies")
    live_precision: float | None = None
    live_coverage: float | None = None
    temperature: float | None = Field(default=None, gt=0, description="how far a person's shots are trusted over the "
                                      "model in a calibrated answer (softmax(log p - d / T)), fitted by likelihood on a "
                                      "simulated calibration of people the model was not trained on")
    calibrated_threshold: float | None = Field(default=None, ge=0, le=1, description="the calibrated answer (with a "
                                               "profile), chosen on that simulated calibration")
    calibrated_precision: float | None = Field(default=None, description="the simulated calibration's confident "
                                               "answers right, at calibrated_threshold")
    calibrated_coverage: float | None = None


class RuntimeScores(_Record):
    """The image model's answers on one image set through each runtime, against torch's."""

    images: int = Field(ge=0)
    torch_accuracy: float
    fp32_accuracy: float = Field(description="on the fp32_images it ran on")
    fp32_agreement: float = Field(description="share of the fp32_images where fp32 ONNX gives torch's top-1")
    int8_accuracy: float
    int8_agreement: float
    fp32_images: int | None = Field(default=None, ge=0, description="the seeded sample fp32 is checked on "
                                    "(inference.fp32_check_images); None: every image (cards before it)")

    def summary(self) -> str:
        """One line for the model's README and ``export-onnx``'s output."""
        sample = "" if self.fp32_images in (None, self.images) else f" of a sample of {self.fp32_images}"
        return (f"{self.images} images: accuracy torch {self.torch_accuracy:.2%}, int8 {self.int8_accuracy:.2%} "
                f"(top-1 as torch's on {self.int8_agreement:.2%}); fp32 top-1 as torch's on "
                f"{self.fp32_agreement:.2%}{sample}")


class OnnxCard(_Record):
    """The image model as ONNX (``model.onnx``, ``model.int8.onnx``), checked at export."""

    opset: int
    onnxruntime: str
    fp32_file: str
    int8_file: str
    quantization_images: int = Field(ge=1, description="training images the int8 ranges come from")
    scores: dict[str, RuntimeScores] = Field(default_factory=dict, description="'test' split, 'cross_domain' folder")
    int8_usable: bool
    int8_verdict: str = Field(description="why int8 is (or is not) used")


class ModelCard(_Record):
    format_version: int = FORMAT_VERSION
    version: str | None = Field(default=None, description="v<N> inside its models folder")
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    backbone: str
    weights: str = Field(default="imagenet", description="the backbone's starting weights")
    classes: list[str] = Field(min_length=2)
    preprocessing: PreprocessingCard
    head: HeadCard
    unfreeze_last_stage: bool = False
    kind: Literal["image", "hand_aware"] = "image"
    hands: HandsCard | None = None
    fusion: FusionCard | None = None
    confidence: ConfidenceCard | None = Field(default=None, description="None: exported before format 4 (serving "
                                              "then uses a threshold not chosen on data: model.confidence.UNCHOSEN_THRESHOLD)")
    onnx: OnnxCard | None = Field(default=None, description="None: exported before ONNX export (converted on load)")
    validation: ValidationCard | None = Field(default=None, description="None: exported before format 5 (chosen on "
                                              "the validation split)")
    metrics: dict[str, float | int] = Field(default_factory=dict)
    data: DataCard | None = None
    checkpoint: str | None = Field(default=None, description="the Ray Train checkpoint the weights come from")
    config: dict[str, Any] | None = Field(default=None, description="the resolved training config")
    inputs_sha256: str | None = Field(default=None, description="what the pipeline made it from (its config but "
                                      "serve and run, every listed file's path, size and mtime, the package's code, "
                                      "library versions): a re-run on the same inputs reuses the model")

    @model_validator(mode="after")
    def _hand_aware_is_complete(self) -> ModelCard:
        present = (self.hands is not None, self.fusion is not None)
        if self.kind == "hand_aware" and present != (True, True):
            raise ValueError("a hand_aware model needs both 'hands' and 'fusion'")
        if self.kind == "image" and any(present):
            raise ValueError("an image model has neither 'hands' nor 'fusion'")
        if self.fusion is not None:
            from asl_platform.model.fusion import rules_for

            if self.fusion.rule not in rules_for(self.classes):
                raise ValueError(f"fusion rule {self.fusion.rule!r} cannot answer with these classes "
                                 "(landmarks|nothing needs a 'nothing' class)")
        return self

    @property
    def prep(self) -> Preprocessing:
        return self.preprocessing.to_preprocessing()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CARD_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ModelCard:
        path = Path(directory) / CARD_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory} is not a model directory (no {CARD_FILE})") from None
        except ValueError as exc:
            raise ModelCardError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_json_dict(raw, str(path))

    @classmethod
    def from_json_dict(cls, raw: Any, source: str = CARD_FILE) -> ModelCard:
        if not isinstance(raw, dict):
            raise ModelCardError(f"{source} must hold a JSON object")
        version = raw.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelCardError(f"{source} has format_version {version!r}; this asl-platform reads up to "
                                 f"{FORMAT_VERSION}: upgrade asl-platform to load it")
        if version < 3 and any(key in raw for key in ("kind", "hands", "fusion", "onnx")):
            raise ModelCardError(f"{source}: format_version {version} has no hand-aware or ONNX fields (kind, hands, fusion, onnx); "
                                 "the file was edited or written by another tool")
        if version < 2:
            raw = _upgrade_v1(raw)
        if version < 4 and any(key in raw for key in ("confidence",)):
            raise ModelCardError(f"{source}: format_version {version} has no confidence field; "
                                 "the file was edited or written by another tool")
        if version < 5 and "validation" in raw:
            raise ModelCardError(f"{source}: format_version {version} has no validation field; "
                                 "the file was edited or written by another tool")
        if version < 6 and isinstance(raw.get("confidence"), dict):  # its temperature was of the shots alone
            raw = {**raw, "confidence": {key: value for key, value in raw["confidence"].items()
                                         if key not in ("temperature", "calibrated_precision", "calibrated_coverage")}}
        if version < 7 and isinstance(raw.get("onnx"), dict) and "calibration_images" in raw["onnx"]:
            onnx = dict(raw["onnx"])  # renamed: "calibration" names a learner's profile only
            onnx["quantization_images"] = onnx.pop("calibration_images")
            raw = {**raw, "onnx": onnx}
        raw = {**raw, "format_version": FORMAT_VERSION}  # 2 -> 3 -> ... -> 7 only added (or renamed) fields
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ModelCardError(f"{source} is not a valid model card: {problems}") from None


def _upgrade_v1(raw: dict) -> dict:
    """Format 1 (until 2026-12) was an untyped dict: the pipeline also wrote ``hyperparameters`` and
    ``last_stage`` (both also inside ``config``) and ``train`` wrote ``training.checkpoint``."""
    training = raw.get("training")
    checkpoint = training.get("checkpoint") if isinstance(training, dict) else None
    raw = {k: v for k, v in raw.items() if k not in ("hyperparameters", "last_stage", "training")}
    return {**raw, "format_version": FORMAT_VERSION, **({"checkpoint": checkpoint} if checkpoint else {})}


def write_readme(directory: str | Path, card: ModelCard | None = None) -> Path:
    """A short human-readable README.md next to the weights, from the card. In-domain and
    cross-domain accuracy stand side by side: the second is what a new user should expect."""
    directory = Path(directory)
    card = card or ModelCard.load(directory)
    prep, data = card.preprocessing, card.data or DataCard()
    lines = [
        f"# ASL alphabet recogniser {card.version or ''}".rstrip(),
        "",
        f"- **Backbone**: `{card.backbone}` ({card.weights} weights), "
        f"head: two fully connected layers (hidden {card.head.hidden_size}, dropout {card.head.dropout:.2f})",
        f"- **Classes** ({len(card.classes)}): {', '.join(card.classes)}",
        f"- **Input**: RGB, resized to {prep.image_size}px, normalised with mean {list(prep.mean)} and std {list(prep.std)}",
        (f"- **Trained on**: {len(data.sources)} folders, classes matched by name and each split on its own: "
         + "; ".join(f"`{s.root}` ({s.images} images)" for s in data.sources) if data.sources else
         f"- **Trained on**: `{data.root or '?'}`" + (" (synthetic smoke set: not a real ASL model)" if data.smoke_set else "")),
        f"- **Created**: {card.created}",
    ]
    if card.hands is not None and card.fusion is not None:
        detection = card.hands.detection
        lines += [
            f"- **Hand-aware**: MediaPipe Hands {detection.mediapipe} (paddings {detection.paddings}, min confidence "
            f"{detection.min_confidence}) finds the hand; a landmark model (hidden {card.hands.head.hidden_size}) reads "
            f"its shape. Answer: `{card.fusion.rule}` (see `asl_platform.model.fusion`), chosen on the "
            f"{card.fusion.selected_on}: " + ", ".join(f"{rule} {score:.1%}" for rule, score in card.fusion.scores.items())
            + " (the exported rule's score there is the best of these, so slightly optimistic)",
        ]
    if card.validation is not None and card.validation.mode == "people":
        validation = card.validation
        lines.append(f"- **Chosen on people it was not trained on**: {validation.chosen_on}; the exported answer "
                     f"there {validation.accuracy:.1%} (" + ", ".join(f"{group} {score:.0%}" for group, score in
                                                                      validation.per_group.items()) + ")")
    elif card.validation is not None and card.validation.note:
        lines.append(f"- **Chosen on**: the {card.validation.chosen_on} ({card.validation.note})")
    if card.onnx is not None:
        onnx = card.onnx
        lines.append(f"- **ONNX**: `{onnx.fp32_file}` and `{onnx.int8_file}` (opset {onnx.opset}, ONNX Runtime "
                     f"{onnx.onnxruntime}; int8's ranges from {onnx.quantization_images} training images). int8 "
                     f"{'is used' if onnx.int8_usable else 'is not used'}: {onnx.int8_verdict}")
        lines += [f"  - {name}, {score.summary()}" for name, score in onnx.scores.items()]
    headline = [f"{name} {card.metrics[key]:.1%}" for key, name in
                (("test_accuracy", "in-domain test"), ("cross_domain_accuracy", "cross-domain (other people)"))
                if isinstance(card.metrics.get(key), (int, float))]
    lines += ["", "## Metrics", ""] + ([f"**{' | '.join(headline)}**", ""] if headline else [])
    lines += [f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}" for key, value in card.metrics.items()]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "Classifies a single image of one hand signing a letter of the ASL fingerspelling alphabet (plus",
        "`del`, `nothing`, `space`). Accuracy on other people, lighting and backgrounds (cross-domain) is",
        "lower than on the training distribution; see the cross-domain metric above when present. J and Z",
        "are moving signs, seen here as a single frame. Not a sign-language translator.",
        "",
        "Load with `asl_platform.model.Predictor(<this folder>)`; weights are safetensors (no code runs on load).",
    ]
    path = directory / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
