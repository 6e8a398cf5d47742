"""The one typed configuration object for every stage.

Loaded from a YAML file, then CLI overrides (``--set train.lr=0.01``) are applied on top.
Pydantic does the validation so that an unknown key, a wrong type or an out-of-range value is
reported with the key's dotted path and the reason, instead of failing deep inside a Ray task.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from asl_platform.errors import UserError
from asl_platform.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS


class ConfigError(UserError):
    """A configuration file or override is invalid; the message says which key and why."""


class _Section(BaseModel):
    # extra="forbid": a typo in a key is an error, not a silently ignored setting.
    # coerce_numbers_to_str: `--set run.name=2024` is parsed as YAML (an int) but meant as text.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


# A file named <person>-<n>.<ext> is that person's (asl-signers' and asl-people's webcam frames are so named).
PERSON_PATTERN = r"^(?P<person>.+)-\d+\.[A-Za-z0-9]+$"


class DataConfig(_Section):
    """Where the images are and how they are split and preprocessed."""

    root: str | list[str] | None = Field(
        default=None,
        description="Image folder (local path or s3://...), or a list of them (classes matched by name, each "
                    "split on its own). None uses the built-in synthetic smoke set.",
    )
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0, description="Share of each class held out at random to "
                                "choose on (data.validation=split, or people with a single group): epochs, trials, the "
                                "fusion rule, the \"not sure\" threshold.")
    test_fraction: float = Field(default=0.15, ge=0.0, lt=1.0, description="Share of each class held out for the test accuracy (never chosen on).")
    seed: int = Field(default=42, description="Seed of the stratified split; same seed, same split.")
    max_images_per_class: int | None = Field(
        default=None, ge=1, description="Cap per class (quick experiments); None keeps all."
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Images per Ray Data batch.")
    max_image_bytes: int = Field(
        default=MAX_IMAGE_BYTES, ge=1024, description="Larger files are skipped as unreadable."
    )
    cross_domain_root: str | None = Field(
        default=None,
        description="Evaluated (never trained on) after training, e.g. ../shared/data/asl-webcam.",
    )
    balance_sources: bool = Field(
        default=True,
        description="With several folders, each weighs the same in training on cached features and landmarks "
                    "(rows drawn in inverse proportion to their folder's size) and in choosing the answer rule and "
                    "the confidence threshold on the validation split: one person's many photos do not drown a "
                    "smaller folder of many people. Nothing to balance with one folder.",
    )

    validation: Literal["people", "split"] = Field(
        default="people",
        description="What the pipeline chooses on (when training stops, the search's best trial, the fusion rule, the "
                    "\"not sure\" threshold, the calibration temperature). 'people': people the model being chosen "
                    "was not trained on: each group (a person named by the file name, data.person_pattern, else a "
                    "folder) held out in turn, the exported model trained on all of them; with a single group, the "
                    "validation split (said in the log and the card). 'split': a random validation split of the same "
                    "folders (data.val_fraction).",
    )
    person_pattern: str = Field(
        default=PERSON_PATTERN,
        description="A regular expression with a (?P<person>...) group, matched against each training file's name: the "
                    "person it names; files it does not match are their folder's group.",
    )

    @field_validator("person_pattern")
    @classmethod
    def _pattern_names_a_person(cls, pattern: str) -> str:
        import re

        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if "person" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<person>...) that matches the person's name")
        return pattern

    @field_validator("root")
    @classmethod
    def _roots_are_distinct(cls, root: str | list[str] | None) -> str | list[str] | None:
        if isinstance(root, list):
            if not root:
                raise ValueError("an empty list of folders; give one or more, or leave data.root unset")
            if len(set(root)) != len(root):
                raise ValueError(f"a folder is listed twice: {root}")
            return root[0] if len(root) == 1 else root
        return root

    @property
    def roots(self) -> list[str] | None:
        """The training folders as a list (None: the synthetic smoke set)."""
        return None if self.root is None else [self.root] if isinstance(self.root, str) else list(self.root)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"test_fraction: val_fraction ({self.val_fraction}) + test_fraction ({self.test_fraction}) "
                "must be < 1 so that some images are left for training"
            )
        return self


# The backbone registry's names (``model.backbones.BACKBONES``, checked equal by a test): here so that
# loading a config needs no torch and imports nothing above this layer.
BACKBONE_NAMES = ("resnet50", "efficientnet_lite0", "tiny")


class ModelConfig(_Section):
    """Which backbone, which weights, and the shape of the trainable head."""

    backbone: str = Field(default="resnet50", description="A name from the backbone registry: "
                          + ", ".join(BACKBONE_NAMES) + ".")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONE_NAMES)}")
        return name

    weights: str = Field(
        default="imagenet",
        description="'imagenet', 'none' (random init) or a path to a state-dict file.",
    )
    hidden_size: int = Field(default=256, ge=1, le=16384, description="Width of the head's hidden layer (the search chooses it from tune.hidden_size).")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="Dropout before the head's last layer (the search chooses it from tune.dropout).")
    unfreeze_last_stage: bool = Field(default=False, description="Also train the backbone's last stage, on cached activations before it.")
    kind: Literal["image", "hand_aware"] = Field(
        default="image",
        description="'image': the image model alone. 'hand_aware': also a landmark model on MediaPipe hand "
                    "landmarks (section hands), and the pipeline exports the combination that scores best "
                    "cross-domain (data.cross_domain_root) or, without one, on the validation split.",
    )


class HandsConfig(_Section):
    """Hand detection (MediaPipe Hands) and the landmark model's training augmentation
    (model.kind hand_aware only; set elsewhere, a key here is refused)."""

    paddings: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.25, 0.0], min_length=1, max_length=4,
        description="Border (fraction of each side, the image's own edge pixels) tried in order until a hand is found.",
    )
    min_confidence: float = Field(default=0.5, gt=0, le=1, description="MediaPipe's min_detection_confidence.")
    model_complexity: Literal[0, 1] = Field(default=1, description="MediaPipe hand model: 0 lite, 1 full.")
    augment_roll_deg: float = Field(default=15, ge=0, le=90, description="Training: random in-plane rotation (+-).")
    augment_tilt_deg: float = Field(default=25, ge=0, le=90, description="Training: random 3-D yaw and pitch (+-).")
    augment_stretch: float = Field(default=0.1, ge=0, lt=1, description="Training: random per-axis stretch (+-).")
    augment_jitter: float = Field(default=0.02, ge=0, le=1, description="Training: landmark noise (x palm size).")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="Training: cross-entropy label smoothing of the "
                                   "landmark model (on held-out people it kept the loss falling for longer and gave "
                                   "the best mean person; docs/training.md).")
    epochs: int = Field(default=40, ge=1, description="The landmark model's most epochs, in its search (in place of "
                        "tune.max_epochs) and retrain (of train.epochs); early stopping ends the retrain sooner.")
    early_stopping_patience: int = Field(default=6, ge=1, description="The landmark model's retrain stops after this "
                                         "many epochs without a lower validation loss (in place of "
                                         "train.early_stopping_patience: held-out people's loss is noisy).")


class TuneConfig(_Section):
    """The ASHA search over the AdamW hyperparameters.

    mode "features" (default) trains heads on cached backbone features: fast, exact for a frozen
    backbone. mode "images" trains on the images every epoch, for augmentation or an unfrozen last
    stage (model.unfreeze_last_stage): far slower, for users who want it.
    """

    mode: Literal["features", "images"] = Field(default="features", description="'features': trials train heads on cached features; 'images': on the images every epoch.")
    augment: bool = Field(default=True, description="Augment training images (mode images only).")

    num_samples: int = Field(default=8, ge=1, description="Number of trials.")
    max_epochs: int = Field(default=20, ge=1, description="Epochs of a trial that ASHA does not stop.")
    grace_period: int = Field(default=2, ge=1, description="Epochs every trial runs before ASHA may stop it.")
    reduction_factor: int = Field(default=3, ge=2, description="ASHA keeps 1 in this many trials at each rung.")
    max_concurrent_trials: int | None = Field(default=None, ge=1, description="Trials at once; None: as many as the CPUs (GPUs) allow.")
    cpus_per_trial: float = Field(default=1.0, gt=0, description="CPUs reserved for each trial.")
    gpus_per_trial: float = Field(default=0.0, ge=0, description="GPUs reserved for each trial (fractions share one).")
    max_failures: int = Field(default=3, ge=0, description="Times a trial is rerun after its worker or node is lost "
                              "(from its start: trials keep no checkpoint); finished trials are never rerun.")
    lr: tuple[float, float] = Field(default=(1e-5, 1e-1), description="AdamW learning rate: [low, high], sampled log-uniformly.")
    eps: tuple[float, float] = Field(default=(1e-9, 1e-8), description="AdamW eps: [low, high], sampled log-uniformly.")
    weight_decay: tuple[float, float] = Field(default=(1e-3, 1e-1), description="AdamW weight decay: [low, high], sampled log-uniformly.")
    batch_size: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [64, 128], min_length=1, description="Batch sizes to choose from.")
    hidden_size: list[Annotated[int, Field(ge=1, le=16384)]] = Field(default_factory=lambda: [128, 256, 512], min_length=1, description="Head widths to choose from.")
    dropout: tuple[float, float] = Field(default=(0.0, 0.5), description="Head dropout: [low, high], sampled uniformly.")
    seed: int = Field(default=0, description="Seed of the search's sampler and of every trial.")

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> TuneConfig:
        for name in ("lr", "eps", "weight_decay", "dropout"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name}: lower bound {low} is above upper bound {high}")
            if name != "dropout" and low <= 0:
                raise ValueError(f"{name}: bounds must be > 0 (it is sampled log-uniformly)")
        if self.grace_period > self.max_epochs:
            raise ValueError(
                f"grace_period: {self.grace_period} must be <= max_epochs ({self.max_epochs})"
            )
        return self


class TrainConfig(_Section):
    """Retraining with the chosen hyperparameters (AdamW)."""

    lr: float = Field(default=1e-3, gt=0, le=10, description="AdamW learning rate (train on images; the pipeline's search chooses it).")
    eps: float = Field(default=1e-8, gt=0, description="AdamW eps.")
    weight_decay: float = Field(default=1e-2, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(default=64, ge=1, le=65536, description="Batch size per worker.")
    epochs: int = Field(default=20, ge=1, description="Most epochs of a training run (early stopping may end it sooner).")
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (data-parallel).")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="CPUs reserved per worker; leave some for Ray Data.")
    torch_threads: int | None = Field(
        default=None, ge=1,
        description="Intra-op threads per worker; None: the node's cores / num_workers (decoding needs little).",
    )
    use_gpu: bool = Field(default=False, description="Train (and extract features, and evaluate) on GPUs.")
    augment: bool = Field(default=True, description="Random resized crop, colour jitter, small rotation.")
    early_stopping_patience: int = Field(default=3, ge=1, description="Epochs without a better val loss.")
    precision: Literal["auto", "float32"] = Field(
        default="auto",
        description="'auto': bfloat16 autocast where the hardware computes it natively and it pays: on CUDA, and for "
                    "the convolutional kinds (last stage, whole images) on CPUs with AMX or AVX-512 BF16 (weights "
                    "stay float32); 'float32': float32 everywhere.",
    )
    last_stage_lr_factor: float = Field(
        default=0.1, gt=0, le=10,
        description="Where the last stage is trained (model.unfreeze_last_stage): its lr = the head's lr x this.",
    )
    last_stage_label_smoothing: float = Field(
        default=0.1, ge=0, lt=1,
        description="Where the last stage is trained (model.unfreeze_last_stage): cross-entropy label smoothing.",
    )
    last_stage_feature_noise: float = Field(
        default=0.1, ge=0, le=1,
        description="Pipeline with model.unfreeze_last_stage: per-channel multiplicative noise on the cached "
                    "activations (light augmentation; 0 turns it off).",
    )
    init_from: str | None = Field(
        default=None, description="Start from this model directory's weights (same backbone, head and classes)."
    )
    checkpoints_to_keep: int = Field(default=2, ge=1, description="Best N checkpoints by val loss.")
    max_failures: int = Field(default=3, ge=0, description="Worker failures survived (resume from checkpoint).")
    seed: int = Field(default=0, description="Seed of the weights' initialisation and the batch order.")


# The ServeConfig keys a running app reads at use time (the fingerspelling hold): the ingress
# deployment's user_config, applied in reconfigure without a restart; the demo and the API read them.
SPELLING_KEYS = ("spell_hold_s",)
REMOVED_SERVE_KEYS = {
    "spell_min_probability": "removed: one \"not sure\" rule answers every route, the model card's threshold for the "
                             "answer given (photo, live or calibrated; GET /v1/model 'confidence'): delete the key",
}


class ServeConfig(_Section):
    """The HTTP endpoint, its model deployment (batching, autoscaling) and the Gradio demo.

    ``asl-platform serve`` reads this section; ``serve_config.yaml`` (for ``serve run`` /
    ``serve deploy``) holds the same keys: the batching and fingerspelling thresholds as the
    deployments' ``user_config`` (changed live by ``reconfigure``, no replica restart), replicas and
    resources in its ``deployments`` section, the rest as application args. A test keeps the two in step.
    """

    model: str | None = Field(
        default=None, description="Model directory, or a models folder (its 'latest'); --model sets it."
    )
    host: str = Field(default="127.0.0.1", description="Bind address; 0.0.0.0 exposes the server to the network.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the API and the demo.")
    max_request_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, description="Larger bodies get 413, unread.")
    max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=1, description="Larger images (or bombs) get 413.")
    max_batch_images: int = Field(default=32, ge=1, le=1024, description="Images per /predict/batch request.")
    top_k: int = Field(default=5, ge=1, le=29, description="How many letters an answer lists (the top_k query parameter overrides it).")
    max_batch_size: int = Field(default=8, ge=1, le=1024, description="@serve.batch size; 1 turns batching off.")
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0, le=10,
        description="How long a batch waits to fill; 0: take what queued while the last batch ran (no added latency).",
    )
    min_replicas: int = Field(default=1, ge=0, description="Fewest model replicas autoscaling keeps.")
    max_replicas: int = Field(default=2, ge=1, description="Most model replicas autoscaling starts.")
    target_ongoing_requests: float = Field(default=8, gt=0, description="Autoscaling target per model replica.")
    upscale_delay_s: float = Field(default=10, ge=0, description="Load must last this long before adding a replica.")
    downscale_delay_s: float = Field(default=60, ge=0, description="Quiet this long before removing a replica.")
    cpus_per_replica: float = Field(default=1.0, ge=0, description="CPUs reserved for each model replica.")
    gpus_per_replica: float = Field(default=0.0, ge=0, description="GPUs reserved for each model replica.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="asl-platform serve: where the local Ray it starts exports Prometheus metrics (/metrics); None: "
                    "a free port, listed as MetricsExportPort by `ray.nodes()`. On a cluster, `ray start "
                    "--metrics-export-port` decides; `serve run`/`serve deploy` configs refuse this key.",
    )
    demo: bool = Field(default=True, description="Mount the Gradio demo at /demo.")
    spell_hold_s: float = Field(default=1.0, gt=0, description="Fingerspelling: how long a letter must stay.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key, why in REMOVED_SERVE_KEYS.items():
                if key in values:
                    raise ValueError(f"serve.{key}: {why}")
        return values

    @model_validator(mode="after")
    def _replicas_are_ordered(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas: {self.min_replicas} is above max_replicas ({self.max_replicas})")
        return self


# "Calibration" means one thing in this project, a learner's personal profile (model.calibration); the int8
# quantisation's images were called that too until they were renamed.
RENAMED_INFERENCE_KEYS = {"calibration_images": "quantization_images"}


class InferenceConfig(_Section):
    """How the image model runs wherever a model runs: Serve replicas, predict-batch and evaluate
    actors, the frozen-backbone extraction of pipeline and tune; and what export checks."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for old, new in RENAMED_INFERENCE_KEYS.items():
                if old in values:
                    raise ValueError(f"inference.{old} is now inference.{new} (\"calibration\" names a learner's "
                                     f"profile only): rename the key")
        return values

    runtime: Literal["auto", "onnxruntime", "torch"] = Field(
        default="auto", description="'auto': ONNX Runtime on CPU (about 3x faster), torch on GPU (the onnxruntime "
                                    "package has no CUDA provider).",
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto", description="ONNX Runtime only. 'auto': int8 where the model card says it kept its accuracy "
                                    "at export (inference.int8_max_accuracy_drop), else fp32.",
    )
    threads: int | None = Field(
        default=None, ge=1, description="Intra-op threads per actor or replica; None: the CPUs it reserved.",
    )
    quantization_images: int = Field(default=300, ge=1, le=10000,
                                     description="Export: training images int8's ranges are measured on.")
    int8_max_accuracy_drop: float = Field(
        default=0.005, ge=0, le=1,
        description="Export: int8 is used only where its accuracy is at most this far (0.005 = 0.5 points) below "
                    "the model's own (torch's) on the test split and on the cross-domain folder.",
    )
    fp32_check_images: int = Field(
        default=300, ge=1,
        description="Export: fp32 ONNX is checked against torch on a seeded sample of this many images per set "
                    "(it computes what torch does, so its agreement is exact or the export is broken); int8, "
                    "which rounds, is checked on every image.",
    )


class RunConfig(_Section):
    """Where outputs go."""

    output_dir: str = Field(default="asl_runs", description="Runs, caches and models live here.")
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]+$", description="The run's name: its folder under output_dir and the model's under models/.")
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs for a local Ray; None: all.")
    reuse_unchanged: bool = Field(default=True, description="A pipeline re-run reuses the latest model of run.name "
                                  "when it was made from the same inputs (config but serve, run and tracking, every file's path, "
                                  "size and mtime, code, library versions) instead of training again; false: always train.")
    storage_path: str | None = Field(
        default=None, description="Ray Train/Tune storage (s3://... on a cluster); None: <run dir>/ray."
    )


class TrackingConfig(_Section):
    """Experiment tracking and the model registry (MLflow): every run's settings and figures, and each exported
    model as a registered version, logged from the driver. The run folder keeps everything too: a tracking store
    that cannot be reached is a warning, never a failed run."""

    enabled: bool = Field(default=True, description="Log runs to MLflow; false: the run folder only.")
    uri: str | None = Field(
        default=None, description="MLflow tracking URI: http(s)://server, databricks, sqlite:///... (needs the "
                                  "full mlflow package); None: a file store at <run.output_dir>/mlruns.")
    experiment: str | None = Field(default=None, description="The MLflow experiment; None: run.name.")


class Config(_Section):
    """Everything a run needs; one source of truth for every stage."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    hands: HandsConfig = Field(default_factory=HandsConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _hands_only_where_used(self) -> Config:
        if self.model.kind != "hand_aware":
            changed = sorted(key for key, value in self.hands.model_dump().items()
                             if value != getattr(HandsConfig(), key))
            if changed:
                raise ValueError(f"hands: {', '.join('hands.' + k for k in changed)} apply only with "
                                 "model.kind=hand_aware (set it, or drop these keys)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    @property
    def storage_path(self) -> str:
        return self.run.storage_path or str((self.run_dir / "ray").resolve())

    @property
    def models_dir(self) -> Path:
        """Versioned exports: <output_dir>/models/<run.name>/v<N>/ and a ``latest`` pointer."""
        return Path(self.run.output_dir) / "models" / self.run.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            reason = "unknown key"
        elif item["type"] == "value_error":  # our cross-field checks say "field: reason"
            reason = item["msg"].removeprefix("Value error, ")
            field_name, _, rest = reason.partition(": ")
            if rest and field_name.isidentifier():
                key, reason = f"{key}.{field_name}" if key != "<root>" else field_name, rest
        else:
            reason = item["msg"]
            if "input" in item and item["type"] != "value_error":
                reason += f" (got {item['input']!r})"
        lines.append(f"  {key}: {reason}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value``; the value is parsed as YAML so types come out right."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw_value = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if len(path) < 2:
        raise ConfigError(f"override {text!r}: key must be section.key, e.g. train.lr=0.01")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def set_key(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[a][b]...`` for the dotted key ``path``, creating sections as needed."""
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(tree).__name__}")
    return tree


def build_config(tree: dict[str, Any], overrides: list[str] = (), source: str = "config") -> Config:
    """Validate a raw mapping plus ``key=value`` overrides into a Config."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        path, value = parse_override(text)
        set_key(tree, path, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), values: dict[str, Any] | None = None
) -> Config:
    """Load a YAML config file (or the defaults), set ``values`` ({"data.root": "..."}: taken as
    they are, not parsed), then apply ``key=value`` overrides (parsed as YAML)."""
    tree = read_yaml(path) if path else {}
    for key, value in (values or {}).items():
        set_key(tree, key.split("."), value)
    source = (str(path) if path else "defaults") + (" + overrides" if overrides or values else "")
    return build_config(tree, overrides, source=source)


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped inside the package (e.g. ``smoke``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no built-in config named {name!r}")
    return path



def config_reference() -> str:
    """Every config key with its type, default and description, as Markdown tables (one per section):
    the reference in docs/configuration.md is this text (a test checks it), so the docs cannot drift."""
    lines = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        lines += [f"### `{section}`", "", (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "), "",
                  "| key | default | description |", "|---|---|---|"]
        for key, item in model.model_fields.items():
            default = item.get_default(call_default_factory=True)
            shown = "null" if default is None else yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| `{key}` | `{shown}` | {(item.description or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
