"""The HTTP API's routes, one ``APIRouter`` per area: prediction, the model and its health, practice
mode, calibration. ``create_app`` (``serving.app``) assembles them around one ``Serving``: the backend,
the settings and what is derived from the model's description once, when the app is built.

A router is built for one model (its factory takes the ``Serving``): the schema's bounds (``top_k``'s
maximum, the practice letters' enum) are the model's own.
"""

from __future__ import annotations

import io
import time
from typing import Literal

import numpy as np
from dataclasses import dataclass, field

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from asl_platform.config import SPELLING_KEYS, ServeConfig
from asl_platform.hands.shapes import DESCRIPTIONS, MOTION_LETTERS, accepted_labels, draw_shape
from asl_platform.model.calibration import MAX_SHOTS_PER_LETTER
from asl_platform.model.confidence import ANSWER_THRESHOLDS
from asl_platform.serving.backends import Backend, Prediction, confidence_threshold, confident
from asl_platform.serving.calibration import build_profile, checked_calibration
from asl_platform.serving.contract import (
    BatchAnswer, CalibrationAnswer, HealthAnswer, ModelInfo, PracticeCatalogue, PracticeVerdict, PredictAnswer, answers,
    calibration_body, image_body, profile_schema,
)
from asl_platform.serving.landmarks import hand_block, landmark_row, landmarks_body, read_hand
from asl_platform.serving.metrics import ServingMetrics
from asl_platform.serving.practice import check, model_shapes, practice_letters
from asl_platform.serving.protocol import (
    ApiError, error_response, load_json, media_type, read_body, read_labelled_images, read_uploads, top_predictions,
)

IMAGE_ERRORS = (400, 413, 415, 422, 503)


@dataclass
class Serving:
    """What every route reads: the backend, the settings (``SPELLING_KEYS`` read at use time: the ingress's
    ``reconfigure`` changes them), the app's metrics, and the model's description as the routes use it."""

    backend: Backend
    settings: ServeConfig
    metrics: ServingMetrics = field(default_factory=ServingMetrics)

    def __post_init__(self) -> None:
        info = self.backend.info
        self.info: dict = info
        self.classes: list[str] = info["classes"]
        self.model_ref = {"name": info["name"], "version": info["version"]}
        self.hand_aware = info.get("kind") == "hand_aware"
        self.letters = practice_letters(self.classes)
        self.shapes = model_shapes(info)
        # a default above the schema's own maximum would be refused
        self.default_top_k = min(self.settings.top_k, len(self.classes))
        self.profile_schema = profile_schema(info) if self.hand_aware else None

    def answer(self, prediction: Prediction, k: int) -> dict:
        """One prediction as the API answers it: top-k, confident or not, calibrated or not, the hand."""
        top = top_predictions(prediction.probabilities, self.classes, k)
        self.metrics.prediction(top[0]["label"], prediction.hand)
        return {"label": top[0]["label"], "probability": top[0]["probability"],
                "confident": confident(self.info, prediction), "calibrated": prediction.calibrated,
                "top_k": top, "hand": prediction.hand}

    async def classify_one(self, request: Request) -> Prediction:
        """The one image of a request (with the profile it sends), classified; its error raised."""
        read = await read_uploads(request, self.settings, batch=False)
        (result,) = await self.backend.classify([read.uploads[0].data], checked_calibration(read.profile, self.info))
        if isinstance(result, ApiError):
            raise result
        return result

    def one_image(self) -> dict:
        return image_body(batch=False, max_images=1, profile=self.profile_schema)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def predict_router(serving: Serving) -> APIRouter:
    """``/predict`` and ``/predict/batch``."""
    router = APIRouter()
    settings, top_k_query = serving.settings, Query(serving.default_top_k, ge=1, le=len(serving.classes))

    @router.post("/predict", summary="Classify one image (raw body, multipart 'file', or JSON {'image': base64})",
                 response_model=None, responses=answers(PredictAnswer, *IMAGE_ERRORS), openapi_extra=serving.one_image())
    async def predict(request: Request, top_k: int = top_k_query) -> dict:
        started = time.perf_counter()
        with serving.metrics.timed("read"):
            read = await read_uploads(request, settings, batch=False)
        (result,) = await serving.backend.classify([read.uploads[0].data], checked_calibration(read.profile, serving.info))
        if isinstance(result, ApiError):
            raise result
        return {**serving.answer(result, top_k), "model": serving.model_ref, "elapsed_ms": elapsed_ms(started)}

    @router.post("/predict/batch", summary="Classify several images (multipart files, or JSON {'images': [base64]})",
                 response_model=None, responses=answers(BatchAnswer, *IMAGE_ERRORS),
                 openapi_extra=image_body(batch=True, max_images=settings.max_batch_images, profile=serving.profile_schema))
    async def predict_batch(request: Request, top_k: int = top_k_query) -> dict:
        started = time.perf_counter()
        with serving.metrics.timed("read"):
            read = await read_uploads(request, settings, batch=True)
        uploads, results = read.uploads, []
        outcomes = await serving.backend.classify([u.data for u in uploads], checked_calibration(read.profile, serving.info))
        for upload, result in zip(uploads, outcomes):
            item = {"error": result.to_dict()} if isinstance(result, ApiError) else serving.answer(result, top_k)
            results.append({"filename": upload.filename, **item} if upload.filename else item)
        if all("error" in item for item in results):  # nothing usable: the request as a whole failed
            statuses = {r.status for r in outcomes}
            raise ApiError(statuses.pop() if len(statuses) == 1 else 400, "no_valid_images",
                           "none of the images could be classified; see results", {"results": results})
        return {"results": results, "model": serving.model_ref, "elapsed_ms": elapsed_ms(started)}

    return router


def model_router(serving: Serving) -> APIRouter:
    """``/healthz`` and ``/v1/model``."""
    router = APIRouter()

    @router.get("/healthz", summary="Ready to classify (the model deployment answers), and the live settings",
                response_model=None, responses=answers(HealthAnswer, 503))
    async def healthz() -> JSONResponse:
        model_settings = await serving.backend.health()
        if model_settings is None:
            return error_response(503, "unavailable", "the model deployment is not answering")
        live = {**model_settings, **{key: getattr(serving.settings, key) for key in SPELLING_KEYS}}
        return JSONResponse({"status": "ok", "model": serving.model_ref, "settings": live})

    @router.get("/v1/model", summary="Classes, version and evaluation metrics of the served model",
                response_model=None, responses=answers(ModelInfo))
    async def model_info() -> dict:
        return {key: value for key, value in serving.info.items() if key != "hand_shapes"}

    return router


def practice_router(serving: Serving) -> APIRouter:
    """``/v1/practice/letters``, ``/v1/practice/drawing`` and ``/v1/practice/check``."""
    router = APIRouter()
    settings, shapes, letters = serving.settings, serving.shapes, serving.letters

    @router.get("/v1/practice/letters", summary="Practice mode: each letter's handshape, in words and as typical landmarks",
                response_model=None, responses=answers(PracticeCatalogue))
    async def practice_catalogue() -> dict:
        return {"letters": [{"letter": letter, "description": DESCRIPTIONS.get(letter, ""),
                             "motion": letter in MOTION_LETTERS, "accepts": sorted(accepted_labels(letter)),
                             "landmarks": shapes[letter].points.tolist() if letter in shapes else None}
                            for letter in letters],
                "hold_s": settings.spell_hold_s,
                "thresholds": {answer: confidence_threshold(serving.info, answer) for answer in ANSWER_THRESHOLDS}}

    # A query parameter, not a path one: no route of this API takes a path (tests/serving/test_security.py).
    drawn = [letter for letter in letters if letter in shapes] or letters  # none: each letter is a 404
    letter_help = ("a letter this model has a typical hand for" if shapes else "a letter of this model; it has no "
                   "typical hand shapes (an export from before practice mode), so each answers 404")

    @router.get("/v1/practice/drawing", summary="Practice mode: a PNG drawing of the letter's typical hand",
                response_class=Response,
                responses=answers(None, 404, 422, ok_content={"image/png": {"schema": {"type": "string", "format": "binary"}}}))
    async def practice_drawing(letter: str = Query(..., description=letter_help, json_schema_extra={"enum": drawn}),
                               hand: Literal["right", "left"] = Query(
                                   "right", description="the signing hand: left draws the mirror image")) -> Response:
        if letter not in letters:
            raise ApiError(422, "invalid_parameter", f"letter: {letter!r} is not a letter of this model")
        if letter not in shapes:
            raise ApiError(404, "not_found", f"no typical hand shape for {letter!r} in this model")
        buffer = io.BytesIO()
        draw_shape(shapes[letter], letter=letter, mirror=hand == "left").save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @router.post("/v1/practice/check", summary="Practice mode: one image against a target letter, with what to change",
                 response_model=None, responses=answers(PracticeVerdict, *IMAGE_ERRORS), openapi_extra=serving.one_image())
    async def practice_check(request: Request, target: str = Query(..., description="the letter being practised",
                                                                   json_schema_extra={"enum": letters})) -> dict:
        if target not in letters:
            raise ApiError(422, "invalid_parameter", f"target: {target!r} is not a letter of this model "
                           f"({', '.join(letters)})")
        result = await serving.classify_one(request)
        top = serving.answer(result, 3)
        return {**check(top["label"], top["probability"], top["confident"], result.hand, target, shapes),
                "calibrated": top["calibrated"], "top_k": top["top_k"], "hand": result.hand, "model": serving.model_ref}

    return router


def landmarks_router(serving: Serving) -> APIRouter:
    """``/v1/landmarks``: the answer from a hand found elsewhere (a hand-aware model only: an image-only
    model has no landmark model). The demo's live modes send each frame's hand here, never the frame."""
    router = APIRouter()
    nothing = "nothing" in serving.classes

    @router.post("/v1/landmarks", summary="Classify a hand from its 21 landmarks (found in the browser): the answer "
                 "of the model's landmark side", response_model=None,
                 responses=answers(PredictAnswer, 400, 413, 415, 422, 503), openapi_extra=landmarks_body(serving.profile_schema, nothing))
    async def landmarks(request: Request, top_k: int = Query(serving.default_top_k, ge=1, le=len(serving.classes))) -> dict:
        started = time.perf_counter()
        if media_type(request) != "application/json":
            raise ApiError(415, "unsupported_media_type", 'send application/json: {"landmarks": [[x, y, z], ...], '
                           '"handedness": "Right"}')
        document = load_json(await read_body(request, serving.settings.max_request_bytes))
        points, handedness = read_hand(document)
        calibration = checked_calibration(document.get("profile"), serving.info)
        if points is None:  # no hand: what the landmark side answers without one
            if not nothing:
                raise ApiError(400, "invalid_landmarks", "this model has no 'nothing' class to answer a frame without a "
                               "hand: send a hand's landmarks")
            probabilities = np.zeros(len(serving.classes), np.float32)
            probabilities[serving.classes.index("nothing")] = 1.0
            result = Prediction(probabilities, source="live")
        else:
            (result,) = await serving.backend.classify_landmarks([landmark_row(points, handedness)], calibration)
            if isinstance(result, ApiError):
                raise result
        answer = serving.answer(result._replace(hand=hand_block(points, handedness)), top_k)
        return {**answer, "model": serving.model_ref, "elapsed_ms": elapsed_ms(started)}

    return router


def calibration_router(serving: Serving) -> APIRouter:
    """``/v1/calibration`` (a hand-aware model only: calibration reads hands)."""
    router = APIRouter()
    max_calibration_images = MAX_SHOTS_PER_LETTER * len(serving.letters)

    @router.post("/v1/calibration", summary="Calibrate to one person: labelled images of their signs -> their profile",
                 response_model=None, responses=answers(CalibrationAnswer, 400, 413, 415, 422, 503),
                 openapi_extra=calibration_body(serving.letters, max_calibration_images))
    async def calibration(request: Request) -> dict:
        if media_type(request) != "application/json":
            raise ApiError(415, "unsupported_media_type", 'send application/json: {"images": [{"letter": ..., '
                           '"image": base64}, ...]}')
        body = await read_body(request, serving.settings.max_request_bytes)
        labelled = read_labelled_images(load_json(body), serving.letters, max_calibration_images)
        return {**await build_profile(serving.backend, labelled), "model": serving.model_ref}

    return router
