"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=serving.schemathesis_hooks``): what a valid image is.

An OpenAPI schema can say "a JPEG" (``image/jpeg``, ``format: binary``, ``contentMediaType``) but not
what makes bytes one, so without these the fuzzer's "valid" images are random bytes and every
positive case is a 400. With them, schema-valid requests carry real images of random size and
content; the negative cases (wrong types, missing fields, bad base64) are generated as before.
"""

from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def _encode(width: int, height: int, colour: tuple[int, int, int], noise: int, fmt: str) -> bytes:
    image = Image.new("RGB", (width, height), colour)
    if noise:  # some texture, so the detector and the model see more than a flat colour
        image = Image.blend(image, Image.effect_noise((width, height), noise).convert("RGB"), 0.3)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def images(fmt: str) -> st.SearchStrategy[bytes]:
    side = st.integers(min_value=8, max_value=160)
    colour = st.tuples(*[st.integers(0, 255)] * 3)
    return st.builds(_encode, side, side, colour, st.integers(0, 64), st.just(fmt))


for media_type, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media_type, images(fmt))

# JSON bodies: `format: byte` strings are the base64 of a real image
schemathesis.openapi.format("byte", st.one_of(*[images(fmt) for fmt in FORMATS.values()]).map(
    lambda data: base64.b64encode(data).decode()))
