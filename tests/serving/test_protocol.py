"""asl_platform.serving.protocol on its own: turning bytes into the model's input, and ranking answers.
(Everything else in it, parsing each body format and every error, is tested through the app in test_app.py.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.serving import png_header_only
from PIL import Image

from asl_platform.data.decode import Preprocessing
from asl_platform.serving.protocol import ApiError, prepare_image, top_predictions


def test_prepare_image_resizes_and_converts_modes():
    prep = Preprocessing(image_size=32)
    for mode in ("RGB", "RGBA", "L", "CMYK", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (50, 40)).save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
        array = prepare_image(buffer.getvalue(), prep, max_pixels=10_000)
        assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    with pytest.raises(ApiError) as caught:
        prepare_image(png_header_only(200, 200), prep, max_pixels=10_000)
    assert caught.value.status == 413


def test_top_predictions_sorted_and_cut():
    top = top_predictions(np.array([0.1, 0.6, 0.3]), ["x", "y", "z"], 2)
    assert top == [{"label": "y", "probability": 0.6}, {"label": "z", "probability": 0.3}]
