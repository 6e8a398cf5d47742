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
    min_probability: float


class PracticeVerdict(BaseModel):
    target: str
    label: str
    probability: float = Field(ge=0, le=1)
    correct: bool
    looks_like: str | None
    hints: list[str] = Field(description="what to change, in plain words (at most two)")
    motion: bool
    description: str
    top_k: list[LabelProbability]
    hand: HandBlock | None
    model: ModelRef


# --------------------------------------------------------------------------- request bodies


def image_body(batch: bool, max_images: int) -> dict:
    """``openapi_extra`` for a route that reads images with ``read_uploads``."""
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
    422: "a query parameter out of range",
    500: "an unexpected error (logged on the server)",
    503: "no model replica could answer; try again",
}


def answers(ok: type[BaseModel] | None, *errors: int, ok_content: dict | None = None) -> dict:
    """FastAPI ``responses``: the 200 model (or a non-JSON ``ok_content``) and each error's shape."""
    documented: dict[int | str, dict] = {
        status: {"model": ErrorBody, "description": _ERRORS[status]} for status in (*errors, 500)}
    documented[200] = {"model": ok, "description": "OK"} if ok else {"description": "OK", "content": ok_content}
    return documented
