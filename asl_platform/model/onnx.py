"""The image model through ONNX Runtime: exported once (``model.onnx``), quantised to int8 on a few
hundred training images (``model.int8.onnx``), and run by ``OnnxImageModel``.

Why: on CPUs ONNX Runtime runs EfficientNet-Lite0 about 3x faster than torch eager in fp32 and about
6x in int8 (``bench/runtime.py``). The torch module stays the reference; whether the int8 file may be
used is decided at export by scoring it against fp32 (``onnx_export``), and recorded in the card.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 17
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT, OUTPUT = "images", "logits"


def to_onnx(module: nn.Module, image_size: int, path: str | Path | None = None) -> bytes:
    """``module`` (NCHW float32 -> logits) as an ONNX graph with a dynamic batch axis; written to
    ``path`` when given. The TorchScript exporter: it needs neither onnxscript nor a dynamo trace,
    and matches torch within 3e-6 on these convnets."""
    module = module.eval()
    buffer = io.BytesIO()
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        # EfficientNet-Lite's TF "same" padding slices with negative steps: nothing to fold, harmless.
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


class _RangeImages:
    """ONNX Runtime's ``CalibrationDataReader`` (its name for the images static quantisation measures ranges on)
    over preprocessed images, a batch at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self._batches = iter([{INPUT: np.ascontiguousarray(images[i:i + batch_size], np.float32)}
                              for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32: str | Path, images: np.ndarray, output: str | Path) -> None:
    """Static int8 quantisation of ``fp32`` (QDQ; uint8 activations with MinMax ranges from
    ``images``, N x 3 x H x W preprocessed images; per-channel int8 weights in 7 bits), which
    ONNX Runtime fuses into QLinearConv. Why these: static, because dynamic quantisation leaves
    convolutions in float; uint8 x int8 is x86's fast integer path (int8 x int8 measured 1.4x slower
    here); and 7-bit weights (``reduce_range``) avoid that path's overflow on CPUs without VNNI, which
    cost 2.5 points of accuracy on asl-alphabet with 8-bit weights and 0.5 with 7 (bench/runtime.py)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(images):
        raise ValueError("int8 quantisation needs at least one image to measure its ranges on")
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and graph optimised: what quantisation expects
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # The quantiser logs a line per adjusted bias scale on the root logger (hundreds): keep its warnings only.
        root.setLevel(max(level, logging.WARNING))
        try:
            quantize_static(str(prepared), str(output), _RangeImages(images), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        finally:
            root.setLevel(level)


def session_options(threads: int | None):
    """One intra-op pool of ``threads`` (default: torch's count, which Ray sets to a worker's CPUs),
    no inter-op pool: each actor or replica uses what it reserved, and no more."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxImageModel:
    """An ONNX image model on the CPU: preprocessed NCHW float32 batch -> logits, as the torch model."""

    def __init__(self, model: str | Path | bytes, threads: int | None = None):
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
