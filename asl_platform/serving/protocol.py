"""The HTTP contract, apart from any framework wiring: JSON errors, how uploads are read (raw body,
multipart, JSON base64) within the size limits, and how bytes become the model's input.

Everything here is plain functions and classes over Starlette requests, so the rules can be tested
alone and shared by the FastAPI app, the Gradio demo and the model deployment.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from PIL import Image
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartParser

from asl_platform.config import ServeConfig
from asl_platform.data.decode import ImageTooLargeError, Preprocessing, decode_image, resize_for_model
from asl_platform.hands.detect import DETECT_MAX_SIDE

logger = logging.getLogger(__name__)

RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp")
ACCEPTED_TYPES = (*RAW_IMAGE_TYPES, "multipart/form-data", "application/json")


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A request we refuse; becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra or {}

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's (404, 405, 422), has the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict(), **exc.extra}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. a 405's Allow (RFC 9110), set by the router
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_parameter", details)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while handling a request")
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server could not answer")


# --------------------------------------------------------------------------- images and answers


def prepare_image(data: bytes, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 array at the model's input size; ApiError (413/400) for anything unusable."""
    return resize_for_model(decode_upload(data, max_pixels, draft_size=prep.image_size), prep)


def decode_upload(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Bytes -> RGB image (JPEGs decoded at reduced scale when far above ``draft_size``); ApiError
    (413/400) for anything unusable."""
    try:
        return decode_image(data, max_pixels=max_pixels, draft_size=draft_size or DETECT_MAX_SIDE)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_image", str(exc)) from None
    except Exception as exc:  # PIL plugins raise many types on hostile input; none may crash the server
        raise ApiError(400, "invalid_image", f"could not decode the image ({type(exc).__name__})") from None


def top_predictions(probabilities: np.ndarray, classes: list[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities)[:k]
    return [{"label": classes[i], "probability": round(float(probabilities[i]), 6)} for i in order]


# --------------------------------------------------------------------------- request bodies


@dataclass
class Upload:
    """One image as received, before decoding."""

    data: bytes
    filename: str | None = None


@dataclass
class ImageRequest:
    """What an image route read: the images, and the sender's calibration profile (a JSON object, not yet
    checked against the model) when one came along: JSON ``"profile"``, or a multipart ``profile`` field."""

    uploads: list[Upload]
    profile: Any = None


def media_type(request: Request) -> str:
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
        await error_response(413, "payload_too_large", message)(scope, receive, send)


def _decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise ApiError(400, "invalid_request", f"{where} must be a non-empty base64 string")
    if text.startswith("data:"):  # a data URL from a browser: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{where} is not valid base64") from None


def load_json(text: bytes | str, what: str = "the body") -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting recurses
        raise ApiError(400, "invalid_json", f"{what} is not valid JSON (or nested too deeply)") from None


def _parse_json(body: bytes, key: str) -> dict:
    """The JSON body, an object with ``key``."""
    document = load_json(body)
    if not isinstance(document, dict) or key not in document:
        raise ApiError(400, "invalid_request", f'JSON body must be an object with an "{key}" field')
    return document


class ImagePartsParser(MultiPartParser):
    """Starlette's multipart parser, except that a part declaring an image Content-Type is a file
    even without a filename: RFC 7578 only says a file's part SHOULD name one, and without this such
    an image would arrive as a text field (decoded as text, so lost)."""

    def on_headers_finished(self) -> None:
        part = self._current_part
        content_type = dict(part.item_headers).get(b"content-type", b"").split(b";")[0].strip().lower()
        if part.content_disposition and content_type.startswith(b"image/"):
            _, options = parse_options_header(part.content_disposition)
            if b"filename" not in options:
                part.content_disposition += b'; filename=""'
        super().on_headers_finished()


async def _form_files(request: Request, max_files: int) -> tuple[list[Upload], Any]:
    try:
        parser = ImagePartsParser(request.headers, request.stream(), max_files=max_files + 1, max_fields=max_files + 16)
        form = await parser.parse()
    except Exception as exc:  # python-multipart raises several types for malformed bodies
        if "Too many files" in str(exc):  # Starlette's MultiPartException for max_files
            raise ApiError(413, "too_many_images", f"more than {max_files} images; send fewer per request") from None
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    uploads = [Upload(await f.read(), f.filename) for f in files]
    profile = form.get("profile")
    await form.close()
    if not uploads:
        raise ApiError(400, "invalid_request", "multipart body has no file field (send the image as 'file')")
    if isinstance(profile, UploadFile):
        raise ApiError(400, "invalid_request", "the 'profile' field is the calibration profile as JSON text, not a file")
    return uploads, None if profile is None else load_json(profile, "the 'profile' field")


async def read_uploads(request: Request, settings: ServeConfig, batch: bool) -> ImageRequest:
    """Images from a raw body, a multipart form or JSON base64, whichever the Content-Type says, and
    the calibration profile sent with them (multipart and JSON only: a raw body is the image alone)."""
    content_type = media_type(request)
    _check_media_type(content_type)
    body = await read_body(request, settings.max_request_bytes)
    profile = None
    if content_type in RAW_IMAGE_TYPES:
        if batch:
            raise ApiError(415, "unsupported_media_type",
                           "/predict/batch takes multipart/form-data files or JSON {\"images\": [...]}")
        return ImageRequest([Upload(body)])
    if content_type == "multipart/form-data":
        uploads, profile = await _form_files(request, settings.max_batch_images if batch else 1)
    elif batch:
        document = _parse_json(body, "images")
        items, profile = document["images"], document.get("profile")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "invalid_request", '"images" must be a non-empty list of base64 strings')
        uploads = [Upload(_decode_base64(item, f"images[{i}]")) for i, item in enumerate(items)]
    else:
        document = _parse_json(body, "image")
        uploads, profile = [Upload(_decode_base64(document["image"], '"image"'))], document.get("profile")
    if batch and len(uploads) > settings.max_batch_images:
        raise ApiError(413, "too_many_images", f"{len(uploads)} images; the limit is {settings.max_batch_images}")
    if not batch and len(uploads) != 1:
        raise ApiError(400, "invalid_request", f"/predict takes one image, got {len(uploads)}; use /predict/batch")
    return ImageRequest(uploads, profile)


def read_labelled_images(document: Any, letters: list[str], max_images: int) -> list[tuple[str, bytes]]:
    """``/v1/calibration``'s body: ``{"images": [{"letter": ..., "image": base64}, ...]}`` -> (letter, bytes)."""
    items = document.get("images") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise ApiError(400, "invalid_request", 'JSON body must be an object with "images": a non-empty list of '
                       '{"letter": ..., "image": base64}')
    if len(items) > max_images:
        raise ApiError(413, "too_many_images", f"{len(items)} images; the limit is {max_images}")
    labelled = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("letter") not in letters:
            raise ApiError(422, "invalid_parameter", f"images[{i}].letter must be one of {', '.join(letters)}")
        if unknown := sorted(set(item) - {"letter", "image"}):
            raise ApiError(400, "invalid_request", f"images[{i}] has unknown fields {unknown}: it holds 'letter' and 'image'")
        labelled.append((item["letter"], _decode_base64(item.get("image"), f"images[{i}].image")))
    return labelled
