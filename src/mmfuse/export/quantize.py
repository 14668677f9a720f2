"""int8 dynamic quantization of exported graphs (onnxruntime.quantization.quantize_dynamic).

Weights become int8; activations are quantized on the fly per call, so no calibration data is
needed. Only MatMul / Gemm (the linear and attention-projection layers) are quantized: the
ConvInteger kernel that quantized convolutions need has no int8-weight implementation in
onnxruntime's CPU provider, so convolutions stay float.
"""
from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from .onnx_export import quiet_logging

QUANTIZED_OPS = ["MatMul", "Gemm"]


def quantize_int8(source: Path, target: Path) -> None:
    with quiet_logging():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
