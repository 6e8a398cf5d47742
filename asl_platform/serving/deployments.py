"""The Ray Serve application: an autoscaling model deployment (``ASLModel``, batching with
``@serve.batch``) behind one FastAPI ingress replica (``ASLIngress``: HTTP rules, OpenAPI docs,
the Gradio demo), how it is built (``build_application``, ``build_app`` for ``serve run`` /
``serve deploy``, ``serve_config_document``) and run (``start``, for ``asl-platform serve``).

Why two deployments: model replicas scale with load and batch across requests, while the ingress
stays one replica because Gradio keeps per-session state in its process. The ingress forwards the
still-compressed image; the model replica decodes it in a worker thread (off the event loop), so
decoding scales with the replicas and a corrupt upload becomes that request's 4xx, never a crash.

What may change while running goes in each deployment's Serve ``user_config`` (``USER_CONFIG_KEYS``)
and is applied by its ``reconfigure``: ``serve deploy`` of a config that changes only those values
updates the replicas in place, without restarting them. Everything else is an application arg.
"""

import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import Field, ValidationError, model_validator
from ray import serve

from asl_platform.config import REMOVED_SERVE_KEYS, SPELLING_KEYS, Config, ConfigError, InferenceConfig, ServeConfig
from asl_platform.limits import MAX_IMAGE_PIXELS
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import HandleBackend, ImageClassifier, Item, LandmarkItem, Prediction

logger = logging.getLogger(__name__)

APP_NAME = "asl"
BATCHING_KEYS = ("max_batch_size", "batch_wait_timeout_s")
# The ServeConfig keys each deployment takes as its user_config (and applies in reconfigure).
USER_CONFIG_KEYS = {"ASLModel": BATCHING_KEYS, "ASLIngress": SPELLING_KEYS}
# Read by `asl-platform serve` when it starts Ray; a serve config runs on a Ray that is already up.
LOCAL_RAY_KEYS = ("metrics_port",)
RUNTIME_KEYS = ("runtime", "precision", "threads")  # of the inference section: what a replica reads
DEPLOYMENT_KEYS = ("host", "port", "min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                   "downscale_delay_s", "cpus_per_replica", "gpus_per_replica")
_DEFAULTS = ServeConfig()


def user_config(settings: ServeConfig, deployment: str) -> dict:
    """``deployment``'s user_config for ``settings``."""
    return {key: getattr(settings, key) for key in USER_CONFIG_KEYS[deployment]}


def checked_user_config(config: dict | None, deployment: str) -> dict:
    """A user_config as ``reconfigure`` applies it: every key of ``deployment``'s, checked like the
    ``serve`` config section; a key left out takes its default (the config alone decides the state)."""
    keys = USER_CONFIG_KEYS[deployment]
    config = dict(config or {})
    for key in set(config) & set(REMOVED_SERVE_KEYS):
        raise ConfigError(f"{deployment} user_config: {key}: {REMOVED_SERVE_KEYS[key]}")
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ConfigError(f"{deployment} user_config: unknown key(s) {', '.join(unknown)}; it takes {', '.join(keys)}")
    try:
        checked = ServeConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(f"invalid {deployment} user_config: {exc}") from None
    return user_config(checked, deployment)


@serve.deployment(name="ASLModel", max_ongoing_requests=64)
class ASLModel:
    """Holds the classifier; ``classify`` gathers concurrent requests into one forward pass.

    Uploads arrive as the client's compressed bytes (smaller than pixels: they travel inline, not
    through the object store) and are decoded here, so decoding scales with the replicas."""

    def __init__(self, model_dir: str, inference: dict | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS):
        import ray
        import torch

        inference = InferenceConfig.model_validate(inference or {})
        if inference.threads:
            torch.set_num_threads(inference.threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"  # num_gpus in the config decides
        self.classifier = ImageClassifier(model_dir, device=device, max_pixels=max_image_pixels, inference=inference)
        self._batching = checked_user_config({}, "ASLModel")  # what @serve.batch starts with, until reconfigure
        size = self.classifier.predictor.preprocessing.image_size
        self.classifier([np.zeros((size, size, 3), dtype=np.uint8)])  # warm up before traffic
        info = self.classifier.info
        logger.info("model %s/%s ready on %s (%s)", info["name"], info["version"], device, info["runtime"])

    def reconfigure(self, config: dict) -> None:
        """Serve calls this with the user_config, at start and whenever a deploy changes only it."""
        batching = checked_user_config(config, "ASLModel")
        for method in (self.classify, self.classify_landmarks):
            method.set_max_batch_size(batching["max_batch_size"])
            method.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        self._batching = batching
        logger.info("batching: %s", batching)

    def describe(self) -> dict:
        return self.classifier.info

    def batching(self) -> dict:
        """The batching settings in force on this replica (its health probe, too)."""
        return dict(self._batching)

    @serve.batch(max_batch_size=_DEFAULTS.max_batch_size, batch_wait_timeout_s=_DEFAULTS.batch_wait_timeout_s)
    async def classify(self, items: list[Item]) -> list[Prediction | dict]:
        """Encoded images (or uint8 arrays at the input size), each maybe with its person's calibration
        -> a ``Prediction`` (probabilities and, for a hand-aware model, the hand block) or an error each. One batch at a time
        (``@serve.batch``'s default ``max_concurrent_batches=1``), and the Predictor locks its hand
        detector anyway."""
        return await asyncio.to_thread(self.classifier, items)

    @serve.batch(max_batch_size=_DEFAULTS.max_batch_size, batch_wait_timeout_s=_DEFAULTS.batch_wait_timeout_s)
    async def classify_landmarks(self, items: list[LandmarkItem]) -> list[Prediction | dict]:
        """Hands found in the browser (landmark rows, each maybe with its calibration) -> the landmark
        model's answers, batched like ``classify``. Run on the event loop: the landmark model costs well
        under a millisecond a batch, less than a thread hop."""
        return self.classifier.classify_landmarks(items)


# One replica must take many concurrent requests (Serve's default of 5 queued the rest in the proxy, which
# retries with backoff: throughput fell by half at 32 clients). 256 bounds what bodies it can hold at once
# (256 x max_request_bytes); the model deployment does the heavy work.
@serve.deployment(name="ASLIngress", num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class ASLIngress:
    """HTTP entry point; builds its FastAPI app on the replica (Gradio apps do not pickle).

    Ray 2.60's ``serve.ingress`` documents two ways to build the app on the replica: a builder
    function (``serve.ingress(build)``) and, with no argument, the class's ``__serve_build_asgi_app__``.
    The builder function is called synchronously, without arguments, from inside the constructor, so
    it sees neither the model handle and settings bound to this deployment nor the model's
    description, which needs an ``await`` (``DeploymentResponse.result()`` is refused inside the
    replica's event loop). Ray's example of the builder form fetches a handle per request
    (``serve.get_deployment_handle`` in a dependency); this app needs the description before its first
    request (classes, the bounds of ``top_k`` in the OpenAPI schema, the demo's header), so it uses
    the second form, which Serve awaits after the constructor and before the replica takes traffic."""

    def __init__(self, model: Any, settings: dict):
        self.model = model
        # Shared with the app and the demo: reconfigure() updates its SPELLING_KEYS in place.
        self.settings = ServeConfig.model_validate(settings)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        info = await self.model.describe.remote()
        assets = None
        if self.settings.demo and info.get("kind") == "hand_aware":  # the page's hand models, on this replica's node
            from asl_platform.serving.browser_hands import ensure_assets

            assets = await asyncio.to_thread(ensure_assets)  # a download, at most: never on the event loop
        return create_app(HandleBackend(self.model, info), self.settings, browser_assets=assets)

    def reconfigure(self, config: dict) -> None:
        """Serve calls this with the user_config, at start and whenever a deploy changes only it."""
        for key, value in checked_user_config(config, "ASLIngress").items():
            setattr(self.settings, key, value)
        logger.info("demo: %s", user_config(self.settings, "ASLIngress"))


# --------------------------------------------------------------------------- building and running


def autoscaling_config(settings: ServeConfig) -> dict:
    return {
        "min_replicas": settings.min_replicas,
        "max_replicas": settings.max_replicas,
        "target_ongoing_requests": settings.target_ongoing_requests,
        "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.downscale_delay_s,
    }


def build_application(settings: ServeConfig, inference: InferenceConfig | None = None):
    """The Serve application for ``settings`` (its ``model`` must be set); the model replicas run
    the image model as ``inference`` says."""
    from asl_platform.model import model_location

    if not settings.model:
        raise ConfigError("serve.model is not set: pass --model DIR (a model version folder or a models folder)")
    model_dir = model_location(settings.model)  # an absolute path (replicas may not share this cwd) or a URI
    model = ASLModel.options(
        autoscaling_config=autoscaling_config(settings),
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
        user_config=user_config(settings, "ASLModel"),
    ).bind(model_dir, (inference or InferenceConfig()).model_dump(mode="json"), settings.max_image_pixels)
    return ASLIngress.options(user_config=user_config(settings, "ASLIngress")).bind(
        model, settings.model_dump(mode="json"))


def serve_config_document(settings: ServeConfig, inference: InferenceConfig | None = None) -> dict:
    """A ``serve run`` / ``serve deploy`` config for ``settings``: replicas, resources and each
    deployment's user_config go in the Ray-native ``deployments`` section (which overrides code),
    everything else in the app's args."""
    live = {key for keys in USER_CONFIG_KEYS.values() for key in keys}
    args = {k: v for k, v in settings.model_dump(mode="json").items()
            if k not in DEPLOYMENT_KEYS and k not in live and k not in LOCAL_RAY_KEYS}
    args["inference"] = _runtime_keys(inference or InferenceConfig())
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": "asl_platform.serving.deployments:build_app",
            "args": args,
            "deployments": [
                {"name": "ASLModel", "autoscaling_config": autoscaling_config(settings),
                 "ray_actor_options": {"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
                 "user_config": user_config(settings, "ASLModel")},
                {"name": "ASLIngress", "num_replicas": 1, "user_config": user_config(settings, "ASLIngress")},
            ],
        }],
    }


class InferenceArgs(InferenceConfig):
    """What a replica reads of the ``inference`` section (the rest is for export)."""

    @model_validator(mode="before")
    @classmethod
    def _runtime_keys_only(cls, values: Any) -> Any:
        if isinstance(values, dict):
            export = sorted(set(values) - set(RUNTIME_KEYS))
            if export:
                raise ValueError(f"inference: {', '.join(export)} apply to export, not to serving; it takes "
                                 f"{', '.join(RUNTIME_KEYS)}")
        return values


class ServeAppArgs(ServeConfig):
    """The application args of ``serve_config.yaml`` (``serve run`` / ``serve deploy``), typed: the ``serve``
    section's keys, checked as in a config file, and ``inference``'s runtime keys. Serve validates a config's
    ``args`` into this before it calls ``build_app`` (a builder whose one parameter is a pydantic model)."""

    inference: InferenceArgs = Field(default_factory=InferenceArgs, description="How the replicas run the image model.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_local_ray_keys(cls, values: Any) -> Any:
        for key in LOCAL_RAY_KEYS:
            if isinstance(values, dict) and key in values:
                raise ValueError(f"{key} applies to `asl-platform serve` (which starts Ray); for serve run/deploy, "
                                 "set it where Ray starts (ray start --metrics-export-port)")
        return values

    def settings(self) -> ServeConfig:
        return ServeConfig.model_validate(self.model_dump(exclude={"inference"}))


def build_app(args: ServeAppArgs):
    """Application builder for ``serve_config.yaml`` (``import_path:
    asl_platform.serving.deployments:build_app``). (A user_config key given in ``args`` becomes the code's
    user_config; the config file's ``deployments`` entry, where ``serve_config_document`` puts them, overrides
    it.) Called directly, a dict is checked the same way."""
    if not isinstance(args, ServeAppArgs):
        try:
            args = ServeAppArgs.model_validate(args)
        except ValidationError as exc:
            raise ConfigError(f"invalid serve application args: {exc}") from None
    return build_application(args.settings(), args.inference)


def _runtime_keys(inference: InferenceConfig) -> dict:
    """What a replica reads of the inference section (the rest is for export)."""
    return {key: getattr(inference, key) for key in RUNTIME_KEYS}


def prefetch_browser_assets(settings: ServeConfig) -> None:
    """``asl-platform serve`` of a hand-aware model with the demo: the page's MediaPipe files fetched here, before
    Ray starts, and said (where they are, or that the live tabs will use the server's frames); a model elsewhere
    (s3://) is left to the ingress replica, which fetches them itself."""
    from asl_platform.data.storage import is_remote
    from asl_platform.model.card import ModelCard
    from asl_platform.model.store import resolve_model_dir
    from asl_platform.serving.browser_hands import asset_dir, ensure_assets

    if not settings.demo or is_remote(settings.model):
        return
    if ModelCard.load(resolve_model_dir(settings.model)).kind != "hand_aware":
        return
    if ensure_assets():
        logger.info("the demo's live tabs find hands in the page: MediaPipe Hands from %s", asset_dir())
    else:
        logger.warning("the demo's live tabs will send frames to the server (no MediaPipe Hands for the page; the "
                       "page says so): start once with access to registry.npmjs.org to fetch them")


def start(cfg: Config, blocking: bool = True) -> str:
    """``asl-platform serve``: start local Ray + Serve on ``serve.host:port`` and deploy the app;
    with ``blocking``, serve until Ctrl-C, then shut Serve down."""
    from asl_platform.runtime import init_ray

    settings = cfg.serve
    application = build_application(settings, cfg.inference)
    prefetch_browser_assets(settings)
    init_ray(cfg, worker_logs=False, metrics_port=settings.metrics_port)  # replicas log every request, into Ray's logs
    serve.start(http_options={"host": settings.host, "port": settings.port})
    url = f"http://{settings.host}:{settings.port}"
    logger.info("deploying %s: POST %s/predict, docs %s/docs%s", settings.model, url, url,
                f", demo {url}/demo" if settings.demo else "")
    import ray

    ports = sorted({node["MetricsExportPort"] for node in ray.nodes() if node.get("Alive")})
    logger.info("Prometheus metrics (ray_asl_*): http://<node>:%s/metrics", ", ".join(map(str, ports)))
    try:
        serve.run(application, name=APP_NAME, route_prefix="/", blocking=blocking)
    except KeyboardInterrupt:
        logger.info("shutting down")
        serve.shutdown()
    return url
