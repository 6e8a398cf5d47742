"""The FastAPI app: /predict, /predict/batch, /healthz, /v1/model, /docs, and the Gradio demo at /demo.

``create_app`` takes any ``Backend``: tests drive it in-process with a ``LocalBackend``, the Serve
ingress builds it on its replica around a ``HandleBackend`` (see ``deployments``).
"""

from __future__ import annotations

import io
import time

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from asl_platform.config import SPELLING_KEYS, ServeConfig
from asl_platform.model.calibration import MAX_SHOTS_PER_LETTER
from asl_platform.serving.backends import Backend, Prediction, confidence_threshold
from asl_platform.serving.calibration import build_profile, checked_calibration
from asl_platform.serving.contract import (
    BatchAnswer, CalibrationAnswer, HealthAnswer, ModelInfo, PracticeCatalogue, PracticeVerdict, PredictAnswer, answers,
    calibration_body, image_body, profile_schema,
)
from asl_platform.serving.demo import mount_demo
from asl_platform.hands.shapes import DESCRIPTIONS, MOTION_LETTERS, accepted_labels, draw_shape
from asl_platform.serving.metrics import RequestMetrics, ServingMetrics
from asl_platform.serving.practice import check, model_shapes, practice_letters
from asl_platform.serving.protocol import (
    ApiError, BodySizeLimit, error_response, install_error_handlers, load_json, media_type, read_body,
    read_labelled_images, read_uploads, top_predictions,
)

# multipart framing around a max-sized Gradio upload (its own per-file limit is max_request_bytes)
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(backend: Backend, settings: ServeConfig) -> FastAPI:
    """The app for ``backend``. ``settings`` is read when the app is built, except ``SPELLING_KEYS``,
    which the demo (and /healthz) read at use time: the ingress's ``reconfigure`` changes them."""
    info = backend.info
    classes = info["classes"]
    model_ref = {"name": info["name"], "version": info["version"]}
    app = FastAPI(
        title="ASL alphabet recogniser",
        version=info["version"],
        description="Classify a photo of an American Sign Language hand sign into one of "
        f"{len(classes)} classes (A-Z, del, nothing, space).",
        docs_url=None, redoc_url=None,  # /docs below, from local files: no CDN, works offline
    )
    install_error_handlers(app)
    metrics = ServingMetrics()

    def answer(prediction: Prediction, k: int) -> dict:
        top = top_predictions(prediction.probabilities, classes, k)
        metrics.prediction(top[0]["label"], prediction.hand)
        threshold = confidence_threshold(info, settings.spell_min_probability)
        return {"label": top[0]["label"], "probability": top[0]["probability"],
                "confident": top[0]["probability"] >= threshold, "calibrated": prediction.calibrated,
                "top_k": top, "hand": prediction.hand}

    def elapsed_ms(started: float) -> float:
        return round((time.perf_counter() - started) * 1000, 2)

    default_top_k = min(settings.top_k, len(classes))  # a default above the schema's own maximum would be refused
    profile = profile_schema(info) if info.get("kind") == "hand_aware" else None
    one_image = image_body(batch=False, max_images=1, profile=profile)
    image_errors = (400, 413, 415, 422, 503)

    @app.post("/predict", summary="Classify one image (raw body, multipart 'file', or JSON {'image': base64})",
              response_model=None, responses=answers(PredictAnswer, *image_errors), openapi_extra=one_image)
    async def predict(request: Request, top_k: int = Query(default_top_k, ge=1, le=len(classes))) -> dict:
        started = time.perf_counter()
        with metrics.timed("read"):
            read = await read_uploads(request, settings, batch=False)
        (result,) = await backend.classify([read.uploads[0].data], checked_calibration(read.profile, info))
        if isinstance(result, ApiError):
            raise result
        return {**answer(result, top_k), "model": model_ref, "elapsed_ms": elapsed_ms(started)}

    @app.post("/predict/batch", summary="Classify several images (multipart files, or JSON {'images': [base64]})",
              response_model=None, responses=answers(BatchAnswer, *image_errors),
              openapi_extra=image_body(batch=True, max_images=settings.max_batch_images, profile=profile))
    async def predict_batch(request: Request, top_k: int = Query(default_top_k, ge=1, le=len(classes))) -> dict:
        started = time.perf_counter()
        with metrics.timed("read"):
            read = await read_uploads(request, settings, batch=True)
        uploads, results = read.uploads, []
        outcomes = await backend.classify([u.data for u in uploads], checked_calibration(read.profile, info))
        for upload, result in zip(uploads, outcomes):
            item = {"error": result.to_dict()} if isinstance(result, ApiError) else answer(result, top_k)
            results.append({"filename": upload.filename, **item} if upload.filename else item)
        if all("error" in item for item in results):  # nothing usable: the request as a whole failed
            statuses = {r.status for r in outcomes}
            raise ApiError(statuses.pop() if len(statuses) == 1 else 400, "no_valid_images",
                           "none of the images could be classified; see results", {"results": results})
        return {"results": results, "model": model_ref, "elapsed_ms": elapsed_ms(started)}

    @app.get("/healthz", summary="Ready to classify (the model deployment answers), and the live settings",
             response_model=None, responses=answers(HealthAnswer, 503))
    async def healthz() -> JSONResponse:
        model_settings = await backend.health()
        if model_settings is None:
            return error_response(503, "unavailable", "the model deployment is not answering")
        live = {**model_settings, **{key: getattr(settings, key) for key in SPELLING_KEYS}}
        return JSONResponse({"status": "ok", "model": model_ref, "settings": live})

    @app.get("/v1/model", summary="Classes, version and evaluation metrics of the served model",
             response_model=None, responses=answers(ModelInfo))
    async def model_info() -> dict:
        return {key: value for key, value in info.items() if key != "hand_shapes"}

    shapes = model_shapes(info)
    letters = practice_letters(classes)

    @app.get("/v1/practice/letters", summary="Practice mode: each letter's handshape, in words and as typical landmarks",
             response_model=None, responses=answers(PracticeCatalogue))
    async def practice_catalogue() -> dict:
        return {"letters": [{"letter": letter, "description": DESCRIPTIONS.get(letter, ""),
                             "motion": letter in MOTION_LETTERS, "accepts": sorted(accepted_labels(letter)),
                             "landmarks": shapes[letter].points.tolist() if letter in shapes else None}
                            for letter in letters],
                "hold_s": settings.spell_hold_s, "min_probability": settings.spell_min_probability}

    # A query parameter, not a path one: no route of this API takes a path (tests/serving/test_security.py).
    drawn = [letter for letter in letters if letter in shapes] or letters  # none: each letter is a 404
    letter_help = ("a letter this model has a typical hand for" if shapes else "a letter of this model; it has no "
                   "typical hand shapes (an export from before practice mode), so each answers 404")

    @app.get("/v1/practice/drawing", summary="Practice mode: a PNG drawing of the letter's typical hand",
             response_class=Response,
             responses=answers(None, 404, 422, ok_content={"image/png": {"schema": {"type": "string", "format": "binary"}}}))
    async def practice_drawing(letter: str = Query(..., description=letter_help, json_schema_extra={"enum": drawn})) -> Response:
        if letter not in letters:
            raise ApiError(422, "invalid_parameter", f"letter: {letter!r} is not a letter of this model")
        if letter not in shapes:
            raise ApiError(404, "not_found", f"no typical hand shape for {letter!r} in this model")
        buffer = io.BytesIO()
        draw_shape(shapes[letter]).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.post("/v1/practice/check", summary="Practice mode: one image against a target letter, with what to change",
              response_model=None, responses=answers(PracticeVerdict, *image_errors), openapi_extra=one_image)
    async def practice_check(request: Request, target: str = Query(..., description="the letter being practised",
                                                                   json_schema_extra={"enum": letters})) -> dict:
        if target not in letters:
            raise ApiError(422, "invalid_parameter", f"target: {target!r} is not a letter of this model "
                           f"({', '.join(letters)})")
        read = await read_uploads(request, settings, batch=False)
        (result,) = await backend.classify([read.uploads[0].data], checked_calibration(read.profile, info))
        if isinstance(result, ApiError):
            raise result
        top = answer(result, 3)
        return {**check(top["label"], top["probability"], top["confident"], result.hand, target, shapes,
                        settings.spell_min_probability),
                "calibrated": top["calibrated"], "top_k": top["top_k"], "hand": result.hand, "model": model_ref}

    if info.get("kind") == "hand_aware":  # calibration reads hands: an image-only model has no such route
        max_calibration_images = MAX_SHOTS_PER_LETTER * len(letters)

        @app.post("/v1/calibration", summary="Calibrate to one person: labelled images of their signs -> their profile",
                  response_model=None, responses=answers(CalibrationAnswer, 400, 413, 415, 422, 503),
                  openapi_extra=calibration_body(letters, max_calibration_images))
        async def calibration(request: Request) -> dict:
            if media_type(request) != "application/json":
                raise ApiError(415, "unsupported_media_type", 'send application/json: {"images": [{"letter": ..., '
                               '"image": base64}, ...]}')
            body = await read_body(request, settings.max_request_bytes)
            labelled = read_labelled_images(load_json(body), letters, max_calibration_images)
            return {**await build_profile(backend, labelled), "model": model_ref}

    add_docs(app)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/demo/" if settings.demo else "/docs")

    if settings.demo:
        app = mount_demo(app, backend, settings)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes + MULTIPART_OVERHEAD_BYTES)
    app.add_middleware(RequestMetrics, metrics=metrics)  # added last: outermost, so it sees every answer
    return app


def add_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from fastapi-offline's copy (Swagger UI 5, which reads OpenAPI 3.1) instead
    of FastAPI's default CDN links, so "Try it out" works on machines without internet. Three fixed
    routes, not a static mount: no route of this API takes a path."""
    from importlib.resources import files

    assets = files("fastapi_offline") / "static"
    for name, media_type in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css"),
                             ("favicon.png", "image/png")):
        app.add_api_route(f"/docs/{name}", _file_route(str(assets / name), media_type), include_in_schema=False)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
                                   swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/favicon.png")


def _file_route(path: str, media_type: str):
    """An endpoint that answers one fixed file (no parameters, so none in its signature either)."""

    async def send_file() -> FileResponse:
        return FileResponse(path, media_type=media_type)

    return send_file
