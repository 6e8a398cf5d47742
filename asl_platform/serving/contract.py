"""The HTTP API's contract as OpenAPI: every request body each route reads, every answer it gives.

The routes read their bodies themselves (``protocol.read_uploads``: raw image, multipart or JSON
base64, whichever the Content-Type says), so FastAPI cannot infer the bodies from the signatures:
they are declared here, next to the answers' models, and checked against the live server by
schemathesis (tests/serving/test_contract_e2e.py). The models document; the routes keep returning
plain dicts, so a response is never silently filtered to fit its model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from asl_platform.hands.rows import INPUT_DIM, POINT_VALUES
from asl_platform.model.calibration import MAX_SHOTS_PER_LETTER

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp")
_IMAGES = ", ".join(IMAGE_MEDIA_TYPES)
_BINARY = {"type": "string", "format": "binary"}
# base64 in JSON: `format: byte` (what code generators read as base64) plus JSON Schema's own keywords
_BASE64_IMAGE = {"type": "string", "format": "byte", "contentEncoding": "base64", "contentMediaType": "image/*",
                 "description": "a JPEG, PNG or WebP image, base64-encoded (a data: URL is accepted too)"}


# --------------------------------------------------------------------------- answers


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable: invalid_image, payload_too_large, ...")
    message: str = Field(description="what was wrong, for a person")


class ErrorBody(BaseModel):
    """Every error, ours or the framework's, has this shape (a batch with no usable image also
    carries its per-image ``results``)."""

    model_config = ConfigDict(extra="allow")
    error: ErrorDetail


class ModelRef(BaseModel):
    name: str
    version: str


class LabelProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class HandBlock(BaseModel):
    """A hand-aware model's hand, in the pixels of the upload as sent; ``found: false`` and nulls
    when it found none."""

    found: bool
    handedness: Literal["Left", "Right"] | None = Field(description="as MediaPipe labels it")
    score: float | None = Field(ge=0, le=1)
    box: list[float] | None = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in pixels")
    landmarks: list[list[float]] | None = Field(min_length=21, max_length=21,
                                                description="21 points (x, y, z): MediaPipe's hand landmarks")


class Classification(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)
    confident: bool = Field(description="the probability is at or above the model's threshold for this answer (photo, "
                                        "live or calibrated: chosen at export on people the model was not trained on, "
                                        "recorded in its card: /v1/model 'confidence'); below it, treat the answer as "
                                        "'not sure'")
    calibrated: bool = Field(description="adapted by the calibration profile sent along (a hand was found)")
    top_k: list[LabelProbability]
    hand: HandBlock | None = Field(description="null for an image-only model, which looks for no hand")


class PredictAnswer(Classification):
    model: ModelRef
    elapsed_ms: float = Field(ge=0)


class BatchPrediction(Classification):
    filename: str | None = Field(None, description="the multipart part's filename, when it had one")


class BatchFailure(BaseModel):
    filename: str | None = None
    error: ErrorDetail


class BatchAnswer(BaseModel):
    results: list[BatchPrediction | BatchFailure] = Field(description="one per image, in the order sent")
    model: ModelRef
    elapsed_ms: float = Field(ge=0)


class HealthAnswer(BaseModel):
    status: Literal["ok"]
    model: ModelRef
    settings: dict[str, Any] = Field(description="the live settings (batching, spelling), changed by reconfigure")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    backbone: str
    classes: list[str]
    kind: str
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    fusion: dict[str, Any] | None
    confidence: dict[str, Any] | None = Field(description="the 'not sure' thresholds and how they were chosen; "
                                                          "null for a model exported before them")
    created: str | None
    sha256: str | None = Field(description="of the weights (and the fusion rule); null when not on disk")
    runtime: str = Field(description="what runs the image model: torch or onnxruntime (fp32 / int8)")


class PracticeLetter(BaseModel):
    letter: str
    description: str
    motion: bool = Field(description="J and Z are drawn in the air: practised by their final handshape")
    accepts: list[str] = Field(description="the model's answers that count as this letter")
    landmarks: list[list[float]] | None = Field(description="the typical hand (21 canonical points), if known")


class PracticeCatalogue(BaseModel):
    letters: list[PracticeLetter]
    hold_s: float
    thresholds: dict[str, float] = Field(description="the probability at or above which an answer is confident, per "
                                         "answer: photo (POST /predict), live (POST /v1/landmarks), calibrated (with a profile)")


class PracticeVerdict(BaseModel):
    target: str
    label: str
    probability: float = Field(ge=0, le=1)
    confident: bool = Field(description="sure enough to judge: an answer that is not is never correct")
    calibrated: bool
    correct: bool
    looks_like: str | None
    hints: list[str] = Field(description="what to change, in plain words (at most two)")
    motion: bool
    description: str
    top_k: list[LabelProbability]
    hand: HandBlock | None
    model: ModelRef


class LetterShots(BaseModel):
    images: int = Field(ge=0, description="images of this letter sent")
    shots: int = Field(ge=0, description="those with a hand found (at most the profile's limit per letter)")
    unusable: int = Field(ge=0, description="not an image, or no hand found")
    used: bool = Field(description="its shots are in the profile: they made no answer worse on the frames kept out")
    why: str = Field(description="why it is used or not, e.g. 'it took 2 frame(s) of other letters that the model had right'")


class HeldOut(BaseModel):
    images: int = Field(ge=1, description="frames kept out of the profile: each shot in turn (or the demo's check hold)")
    accuracy_before: float = Field(ge=0, le=1, description="the landmark model alone on them")
    accuracy_after: float = Field(ge=0, le=1, description="with the profile of the other shots, the letters used")
    on: str = Field(description="'shots' (each in turn) or 'check' (a separate hold)")


class CalibrationAnswer(BaseModel):
    profile: dict[str, Any] | None = Field(description="send it with /predict, /predict/batch and /v1/practice/check "
                                                       "(JSON 'profile', or a multipart 'profile' field); null when "
                                                       "not adopted (why says why)")
    letters: dict[str, LetterShots]
    held_out: HeldOut | None = Field(description="what the profile did; null when there was nothing to measure on")
    adopted: bool = Field(description="false: no hand found, or the profile made answers worse than the model alone")
    why: str = Field(description="why it was not adopted ('' when it was)")
    model: ModelRef


# --------------------------------------------------------------------------- request bodies


def profile_schema(info: dict) -> dict:
    """A calibration profile for the served model, as /v1/calibration returns it: everything a valid one
    must be (so that any profile the schema admits is one this model accepts)."""
    number = {"type": "number", "minimum": -1e6, "maximum": 1e6}
    row = {"type": "array", "prefixItems": [number] * POINT_VALUES + [{"enum": [0, 1]}], "items": False,
           "minItems": INPUT_DIM, "maxItems": INPUT_DIM, "description": "one shot: 21 landmarks (x, y, z) in pixels, then handedness (1 right, 0 left)"}
    return {
        "type": "object", "additionalProperties": False, "required": ["format", "format_version", "model", "shots"],
        "description": "a person's calibration profile for this model (POST /v1/calibration makes one)",
        "properties": {
            "format": {"const": "asl-platform calibration profile"},
            "format_version": {"const": 1},
            "model": {"type": "object", "additionalProperties": False, "required": ["name", "version", "sha256"],
                      "properties": {"name": {"const": info["name"]}, "version": {"const": info["version"]},
                                     "sha256": {"const": info.get("sha256")}}},
            "created": {"type": "string"},
            "shots": {"type": "object", "minProperties": 1, "propertyNames": {"enum": list(info["classes"])},
                      "additionalProperties": {"type": "array", "items": row, "minItems": 1,
                                               "maxItems": MAX_SHOTS_PER_LETTER}},
        },
    }


def calibration_body(letters: list[str], max_images: int) -> dict:
    """``openapi_extra`` of /v1/calibration: labelled images as JSON."""
    item = {"type": "object", "required": ["letter", "image"], "additionalProperties": False,
            "properties": {"letter": {"enum": letters, "description": "the letter the image signs"}, "image": _BASE64_IMAGE}}
    schema = {"type": "object", "required": ["images"], "properties": {"images": {
        "type": "array", "items": item, "minItems": 1, "maxItems": max_images,
        "description": f"a few images of each letter (up to {MAX_SHOTS_PER_LETTER} are kept per letter); letters "
                       "can be left out"}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def image_body(batch: bool, max_images: int, profile: dict | None = None) -> dict:
    """``openapi_extra`` for a route that reads images with ``read_uploads``; with ``profile`` (a hand-aware
    model's ``profile_schema``) the JSON body may carry a calibration profile (multipart: a ``profile``
    text field holding the same JSON)."""
    if batch:
        form = {"type": "object", "required": ["files"], "properties": {"files": {
            "type": "array", "items": _BINARY, "minItems": 1, "maxItems": max_images,
            "description": f"up to {max_images} images ({_IMAGES}); any field name is read"}}}
        json_body = {"type": "object", "required": ["images"], "properties": {"images": {
            "type": "array", "items": _BASE64_IMAGE, "minItems": 1, "maxItems": max_images}}}
        content = {}
    else:
        form = {"type": "object", "required": ["file"],
                "properties": {"file": {**_BINARY, "description": f"one image ({_IMAGES})"}}}
        json_body = {"type": "object", "required": ["image"], "properties": {"image": _BASE64_IMAGE}}
        content = {media: {"schema": _BINARY} for media in IMAGE_MEDIA_TYPES}  # the raw image as the body
    if profile is not None:
        json_body["properties"]["profile"] = {"anyOf": [profile, {"type": "null", "description": "no profile"}]}
        form["description"] = ("a calibration profile (/v1/calibration) may come as a 'profile' field holding its JSON "
                               "text")
    part = "files" if batch else "file"
    content["multipart/form-data"] = {"schema": form, "encoding": {part: {"contentType": _IMAGES}}}
    content["application/json"] = {"schema": json_body}
    return {"requestBody": {"required": True, "content": content}}


# --------------------------------------------------------------------------- answers per route

_ERRORS = {
    400: "the body is not what it claims (not an image, bad base64 or JSON, malformed multipart)",
    404: "no such thing in this model",
    413: "too large: the body, the image's pixels, or the number of images",
    415: f"a Content-Type this route does not read (send {_IMAGES}, multipart/form-data or application/json)",
    422: "a query parameter out of range, or a calibration profile this model cannot use (malformed, another "
         "model's, or sent to a model that does not calibrate)",
    500: "an unexpected error (logged on the server)",
    503: "no model replica could answer; try again",
}


def answers(ok: type[BaseModel] | None, *errors: int, ok_content: dict | None = None) -> dict:
    """FastAPI ``responses``: the 200 model (or a non-JSON ``ok_content``) and each error's shape."""
    documented: dict[int | str, dict] = {
        status: {"model": ErrorBody, "description": _ERRORS[status]} for status in (*errors, 500)}
    documented[200] = {"model": ok, "description": "OK"} if ok else {"description": "OK", "content": ok_content}
    return documented
