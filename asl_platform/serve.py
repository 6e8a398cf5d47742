"""Ray Serve application: a FastAPI ingress (HTTP API, OpenAPI docs, Gradio demo at /demo) in front
of an autoscaling model deployment that batches requests with ``@serve.batch``.

Why two deployments: model replicas scale with load and batch across requests, while the ingress
stays one replica because Gradio keeps per-session state in its process. The ingress enforces the
HTTP rules (content type, size, multipart/JSON/base64) and forwards the still-compressed image;
the model replica decodes it in a worker thread (off the event loop), so decoding scales with the
replicas and a corrupt upload becomes that request's 4xx, never a crash.

``create_app`` takes any ``Backend``; tests drive it in-process, Serve drives it through handles.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from asl_platform.config import Config, ConfigError, ServeConfig
from asl_platform.data import ImageTooLargeError, Preprocessing, decode_image, resize_for_model

logger = logging.getLogger(__name__)

RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp")
ACCEPTED_TYPES = (*RAW_IMAGE_TYPES, "multipart/form-data", "application/json")
APP_NAME = "asl"


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A request we refuse; becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra or {}

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's (404, 405, 422), has the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict(), **exc.extra}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(422, "invalid_parameter", details)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while handling a request")
        return _error_response(500, "internal_error", f"{type(exc).__name__}: the server could not answer")


# --------------------------------------------------------------------------- the model side


def prepare_image(data: bytes, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 array at the model's input size; ApiError (413/400) for anything unusable."""
    try:
        return resize_for_model(decode_image(data, max_pixels=max_pixels, draft_size=prep.image_size), prep)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_image", str(exc)) from None
    except Exception as exc:  # PIL plugins raise many types on hostile input; none may crash the server
        raise ApiError(400, "invalid_image", f"could not decode the image ({type(exc).__name__})") from None


def describe_model(model_dir: Path, meta: dict) -> dict:
    """What ``/v1/model`` shows and every prediction names: which model, which weights, how good."""
    weights = model_dir / "model.safetensors"
    digest = None
    if weights.is_file():
        sha = hashlib.sha256()
        with open(weights, "rb") as handle:  # streamed: no second weights-sized copy in memory
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
        digest = sha.hexdigest()[:16]
    return {
        "name": model_dir.parent.name,
        "version": model_dir.name,
        "backbone": meta["backbone"],
        "classes": list(meta["classes"]),
        "preprocessing": meta["preprocessing"],
        "metrics": meta.get("metrics", {}),
        "created": meta.get("created"),
        "sha256": digest,
    }


class ImageClassifier:
    """Decodes and classifies a batch of uploads in one forward pass. A bad upload gets an error
    result (a dict: exceptions with custom fields do not survive pickling), never an exception, so
    one corrupt image cannot fail the other requests batched with it."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", max_pixels: int = 40_000_000):
        from asl_platform.model import Predictor, resolve_model_dir

        directory = resolve_model_dir(model_dir)
        self.predictor = Predictor(directory, device=device)
        self.info = describe_model(directory, self.predictor.meta)
        self.max_pixels = max_pixels

    def __call__(self, items: list[bytes | np.ndarray]) -> list[np.ndarray | dict]:
        prep, arrays, results = self.predictor.preprocessing, [], []
        for item in items:
            try:
                arrays.append(item if isinstance(item, np.ndarray) else prepare_image(item, prep, self.max_pixels))
                results.append(None)
            except ApiError as exc:
                results.append({"status": exc.status, **exc.to_dict()})
        probabilities = iter(self.predictor.predict_uint8(np.stack(arrays)) if arrays else ())
        return [next(probabilities) if result is None else result for result in results]


def _as_result(result: np.ndarray | dict) -> np.ndarray | ApiError:
    return ApiError(result["status"], result["code"], result["message"]) if isinstance(result, dict) else result


@serve.deployment(name="ASLModel", max_ongoing_requests=64)
class ASLModel:
    """Holds the classifier; ``classify`` gathers concurrent requests into one forward pass.

    Uploads arrive as the client's compressed bytes (smaller than pixels: they travel inline, not
    through the object store) and are decoded here, so decoding scales with the replicas."""

    def __init__(
        self,
        model_dir: str,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.0,
        torch_threads: int | None = None,
        max_image_pixels: int = 40_000_000,
    ):
        import ray
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"  # num_gpus in the config decides
        self.classifier = ImageClassifier(model_dir, device=device, max_pixels=max_image_pixels)
        self.classify.set_max_batch_size(max_batch_size)
        self.classify.set_batch_wait_timeout_s(batch_wait_timeout_s)
        size = self.classifier.predictor.preprocessing.image_size
        self.classifier([np.zeros((size, size, 3), dtype=np.uint8)])  # warm up before traffic
        info = self.classifier.info
        logger.info("model %s/%s ready on %s (batch <= %d)", info["name"], info["version"], device, max_batch_size)

    def describe(self) -> dict:
        return self.classifier.info

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def classify(self, items: list[bytes | np.ndarray]) -> list[np.ndarray | dict]:
        """Encoded images (or uint8 arrays at the input size) -> probabilities or an error each."""
        return await asyncio.to_thread(self.classifier, items)


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """What the HTTP app needs from a model: its description and batched classification."""

    info: dict

    async def classify(self, items: list[bytes | np.ndarray]) -> list[np.ndarray | ApiError]: ...

    async def healthy(self) -> bool: ...


class HandleBackend:
    """The model deployment, through a Serve handle: one call per image, so ``@serve.batch``
    can batch images from different requests together."""

    def __init__(self, handle: Any, info: dict, attempts: int = 3):
        self.handle, self.info, self.attempts = handle, info, attempts

    async def _classify_one(self, item: bytes | np.ndarray) -> np.ndarray | ApiError:
        """Classification is idempotent, so a request caught on a replica that died is sent again
        (Serve routes it to a live or replacement replica): a crash costs latency, not answers."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        for attempt in range(1, self.attempts + 1):
            try:
                return _as_result(await self.handle.classify.remote(item))
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if attempt == self.attempts:
                    raise ApiError(503, "unavailable", "no model replica could answer; try again") from exc
                logger.warning("model replica lost (%s); retrying (%d/%d)", type(exc).__name__, attempt, self.attempts)
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def classify(self, items: list[bytes | np.ndarray]) -> list[np.ndarray | ApiError]:
        return list(await asyncio.gather(*(self._classify_one(item) for item in items)))

    async def healthy(self) -> bool:
        try:
            await asyncio.wait_for(self.handle.describe.remote(), timeout=5)
            return True
        except Exception:  # a health check reports, it does not raise
            return False


class LocalBackend:
    """A model in this process: for tests and for the demo without Ray."""

    def __init__(self, model_dir: str | Path, max_pixels: int = 40_000_000):
        self.classifier = ImageClassifier(model_dir, max_pixels=max_pixels)
        self.info = self.classifier.info

    async def classify(self, items: list[bytes | np.ndarray]) -> list[np.ndarray | ApiError]:
        return [_as_result(result) for result in await asyncio.to_thread(self.classifier, items)]

    async def healthy(self) -> bool:
        return True


# --------------------------------------------------------------------------- request parsing


@dataclass
class Upload:
    """One image as received, before decoding."""

    data: bytes
    filename: str | None = None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _check_media_type(media_type: str) -> None:
    if media_type not in ACCEPTED_TYPES:
        shown = media_type or "none"
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {shown!r} is not accepted; send one of: {', '.join(ACCEPTED_TYPES)}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (the declared length is checked first,
    so an honest client with a huge upload is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "invalid_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was already read
    return body


class BodySizeLimit:
    """Every route, the Gradio demo's included, refuses a body over ``limit`` bytes with a JSON 413.

    A declared Content-Length is checked before anything is read (the server then holds the body to
    that length). A body without one (chunked) is read here, up to the limit, and replayed to the
    app: refusing it half-read instead would leave the answer to the route, and Gradio's parser
    turns a failed read into a 400. (/predict's own, lower limit in ``read_body`` answers first there.)"""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        # With Transfer-Encoding the body's own framing decides its length, whatever Content-Length says.
        declared = None if b"transfer-encoding" in headers else headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                await self._refuse(scope, receive, send, f"request body is {int(declared)} bytes; the limit is {self.limit}")
                return
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(scope, receive, send, f"request body is over the {self.limit}-byte limit")
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # later calls wait for the client to disconnect, as usual
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: dict, receive: Any, send: Any, message: str) -> None:
        await _error_response(413, "payload_too_large", message)(scope, receive, send)


def _decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise ApiError(400, "invalid_request", f"{where} must be a non-empty base64 string")
    if text.startswith("data:"):  # a data URL from a browser: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{where} is not valid base64") from None


def _parse_json(body: bytes, key: str) -> Any:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting recurses
        raise ApiError(400, "invalid_json", "the body is not valid JSON (or nested too deeply)") from None
    if not isinstance(document, dict) or key not in document:
        raise ApiError(400, "invalid_request", f'JSON body must be an object with an "{key}" field')
    return document[key]


async def _form_files(request: Request, max_files: int) -> list[Upload]:
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_files + 16)
    except Exception as exc:  # python-multipart raises several types for malformed bodies
        if "Too many files" in str(exc):  # Starlette's MultiPartException for max_files
            raise ApiError(413, "too_many_images", f"more than {max_files} images; send fewer per request") from None
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    uploads = [Upload(await f.read(), f.filename) for f in files]
    await form.close()
    if not uploads:
        raise ApiError(400, "invalid_request", "multipart body has no file field (send the image as 'file')")
    return uploads


async def read_uploads(request: Request, settings: ServeConfig, batch: bool) -> list[Upload]:
    """Images from a raw body, a multipart form or JSON base64, whichever the Content-Type says."""
    media_type = _media_type(request)
    _check_media_type(media_type)
    body = await read_body(request, settings.max_request_bytes)
    if media_type in RAW_IMAGE_TYPES:
        if batch:
            raise ApiError(415, "unsupported_media_type",
                           "/predict/batch takes multipart/form-data files or JSON {\"images\": [...]}")
        return [Upload(body)]
    if media_type == "multipart/form-data":
        uploads = await _form_files(request, settings.max_batch_images if batch else 1)
    elif batch:
        items = _parse_json(body, "images")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "invalid_request", '"images" must be a non-empty list of base64 strings')
        uploads = [Upload(_decode_base64(item, f"images[{i}]")) for i, item in enumerate(items)]
    else:
        uploads = [Upload(_decode_base64(_parse_json(body, "image"), '"image"'))]
    if batch and len(uploads) > settings.max_batch_images:
        raise ApiError(413, "too_many_images", f"{len(uploads)} images; the limit is {settings.max_batch_images}")
    if not batch and len(uploads) != 1:
        raise ApiError(400, "invalid_request", f"/predict takes one image, got {len(uploads)}; use /predict/batch")
    return uploads


def top_predictions(probabilities: np.ndarray, classes: list[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities)[:k]
    return [{"label": classes[i], "probability": round(float(probabilities[i]), 6)} for i in order]


# --------------------------------------------------------------------------- the HTTP app


def create_app(backend: Backend, settings: ServeConfig) -> FastAPI:
    """The FastAPI app: /predict, /predict/batch, /healthz, /v1/model, /docs, and /demo."""
    info = backend.info
    classes = info["classes"]
    model_ref = {"name": info["name"], "version": info["version"]}
    app = FastAPI(
        title="ASL alphabet recogniser",
        version=info["version"],
        description="Classify a photo of an American Sign Language hand sign into one of "
        f"{len(classes)} classes (A-Z, del, nothing, space).",
    )
    _install_error_handlers(app)

    def answer(probabilities: np.ndarray, k: int) -> dict:
        top = top_predictions(probabilities, classes, k)
        return {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}

    @app.post("/predict", summary="Classify one image (raw body, multipart 'file', or JSON {'image': base64})")
    async def predict(request: Request, top_k: int = Query(settings.top_k, ge=1, le=len(classes))) -> dict:
        started = time.perf_counter()
        (upload,) = await read_uploads(request, settings, batch=False)
        (result,) = await backend.classify([upload.data])
        if isinstance(result, ApiError):
            raise result
        return {**answer(result, top_k), "model": model_ref, "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)}

    @app.post("/predict/batch", summary="Classify several images (multipart files, or JSON {'images': [base64]})")
    async def predict_batch(request: Request, top_k: int = Query(settings.top_k, ge=1, le=len(classes))) -> dict:
        started = time.perf_counter()
        uploads = await read_uploads(request, settings, batch=True)
        results = []
        outcomes = await backend.classify([u.data for u in uploads])
        for upload, result in zip(uploads, outcomes):
            item = {"error": result.to_dict()} if isinstance(result, ApiError) else answer(result, top_k)
            results.append({"filename": upload.filename, **item} if upload.filename else item)
        if all("error" in item for item in results):  # nothing usable: the request as a whole failed
            statuses = {r.status for r in outcomes}
            raise ApiError(statuses.pop() if len(statuses) == 1 else 400, "no_valid_images",
                           "none of the images could be classified; see results", {"results": results})
        return {"results": results, "model": model_ref, "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)}

    @app.get("/healthz", summary="Ready to classify (the model deployment answers)")
    async def healthz() -> JSONResponse:
        if await backend.healthy():
            return JSONResponse({"status": "ok", "model": model_ref})
        return _error_response(503, "unavailable", "the model deployment is not answering")

    @app.get("/v1/model", summary="Classes, version and evaluation metrics of the served model")
    async def model_info() -> dict:
        return info

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/demo/" if settings.demo else "/docs")

    if settings.demo:
        from asl_platform.demo import mount_demo

        app = mount_demo(app, backend, settings)
    # multipart framing around a max-sized Gradio upload (its own per-file limit is max_request_bytes)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes + 64 * 1024)
    return app


# One replica must take many concurrent requests (Serve's default of 5 queued the rest in the proxy, which
# retries with backoff: throughput fell by half at 32 clients). 256 bounds what bodies it can hold at once
# (256 x max_request_bytes); the model deployment does the heavy work.
@serve.deployment(name="ASLIngress", num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class ASLIngress:
    """HTTP entry point; builds its FastAPI app on the replica (Gradio apps do not pickle)."""

    def __init__(self, model: Any, settings: dict):
        self.model = model
        self.settings = ServeConfig.model_validate(settings)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        info = await self.model.describe.remote()
        return create_app(HandleBackend(self.model, info), self.settings)


# --------------------------------------------------------------------------- building and running


def autoscaling_config(settings: ServeConfig) -> dict:
    return {
        "min_replicas": settings.min_replicas,
        "max_replicas": settings.max_replicas,
        "target_ongoing_requests": settings.target_ongoing_requests,
        "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.downscale_delay_s,
    }


def build_application(settings: ServeConfig):
    """The Serve application for ``settings`` (its ``model`` must be set)."""
    from asl_platform.model import model_location

    if not settings.model:
        raise ConfigError("serve.model is not set: pass --model DIR (a model version folder or a models folder)")
    model_dir = model_location(settings.model)  # an absolute path (replicas may not share this cwd) or a URI
    model = ASLModel.options(
        autoscaling_config=autoscaling_config(settings),
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
    ).bind(model_dir, settings.max_batch_size, settings.batch_wait_timeout_s, settings.torch_threads,
           settings.max_image_pixels)
    return ASLIngress.bind(model, settings.model_dump(mode="json"))


DEPLOYMENT_KEYS = ("host", "port", "min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                   "downscale_delay_s", "cpus_per_replica", "gpus_per_replica")


def serve_config_document(settings: ServeConfig) -> dict:
    """A ``serve run`` / ``serve deploy`` config for ``settings``: replicas and resources go in the
    Ray-native ``deployments`` section (which overrides code), everything else in the app's args."""
    args = {k: v for k, v in settings.model_dump(mode="json").items() if k not in DEPLOYMENT_KEYS}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": "asl_platform.serve:build_app",
            "args": args,
            "deployments": [
                {"name": "ASLModel", "autoscaling_config": autoscaling_config(settings),
                 "ray_actor_options": {"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica}},
                {"name": "ASLIngress", "num_replicas": 1},
            ],
        }],
    }


def build_app(args: dict):
    """Application builder for ``serve_config.yaml`` (``import_path: asl_platform.serve:build_app``):
    ``args`` are the ``serve`` section's keys, checked like any config."""
    try:
        settings = ServeConfig.model_validate(dict(args))
    except ValidationError as exc:
        raise ConfigError(f"invalid serve application args: {exc}") from None
    return build_application(settings)


def start(cfg: Config, blocking: bool = True) -> str:
    """``asl-platform serve``: start local Ray + Serve on ``serve.host:port`` and deploy the app."""
    from asl_platform.pipeline import init_ray

    settings = cfg.serve
    application = build_application(settings)
    init_ray(cfg)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application, name=APP_NAME, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}"
    logger.info("serving %s: POST %s/predict, docs %s/docs%s", settings.model, url, url,
                f", demo {url}/demo" if settings.demo else "")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            logger.info("shutting down")
            serve.shutdown()
    return url
