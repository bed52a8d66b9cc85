"""The ``jetson-orin`` target: the Jetson Orin Nano (Super) developer kit on JetPack 6.2.

JetPack 6.2 is L4T r36.4 with CUDA 12.6, TensorRT 10.3 and Python 3.10. TensorRT 10.3's ONNX
parser takes opsets up to 20: newer models are down-converted, or refused with the reason.
Precisions: ``fp16`` (the default) and ``int8``, a QDQ model from onnxruntime's static
quantization (TensorRT builds explicit-precision engines from the Q/DQ pairs, so the engine
needs no calibration cache of its own).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from serving import InvalidInput

ORIN_OPSET = 20  # the highest opset TensorRT 10.3 parses
BASE_IMAGE = "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
JETPACK = "JetPack 6.2 (L4T r36.4, CUDA 12.6, TensorRT 10.3, Python 3.10)"
# TensorRT 10.3's ONNX parser: the operators small vision / tabular / audio models use.
TRT10_OPS = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil",
    "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "CumSum",
    "DequantizeLinear", "Div", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten",
    "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "GRU", "HardSigmoid",
    "HardSwish", "Identity", "If", "InstanceNormalization", "LayerNormalization", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LSTM", "MatMul", "Max", "MaxPool",
    "Mean", "Min", "Mod", "Mul", "Neg", "NonZero", "Not", "OneHot", "Or", "Pad", "Pow", "PRelu",
    "QuantizeLinear", "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "Relu", "Reshape", "Resize", "RNN", "Round", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax",
    "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose",
    "Trilu", "Unsqueeze", "Where", "Xor",
}


def opset_of(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
               default=0)


def down_convert(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model at opset <= 20, or InvalidInput (``export_unsupported``) saying why not."""
    # some converters (skl2onnx) list the default domain twice: keep one entry per domain
    versions: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        versions[domain] = max(versions.get(domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    opset = opset_of(model)
    if opset <= ORIN_OPSET:
        return model, []
    try:
        converted = onnx.version_converter.convert_version(model, ORIN_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises bare RuntimeErrors / ValidationErrors
        raise InvalidInput(
            f"this model uses ONNX opset {opset} and cannot be down-converted to opset "
            f"{ORIN_OPSET}, the newest TensorRT 10.3 parses ({type(exc).__name__}: "
            f"{str(exc)[:200]}); export it as onnx or onnx-fp16 instead",
            code="export_unsupported", details={"opset": opset, "max_opset": ORIN_OPSET},
        ) from exc
    return converted, [f"converted from opset {opset} to {ORIN_OPSET} for TensorRT 10.3"]


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Operators TensorRT 10.3 does not take (they run in onnxruntime on the kit)."""
    return sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node
                   if n.domain not in ("", "ai.onnx") or n.op_type not in TRT10_OPS})


class _Reader:
    """onnxruntime's CalibrationDataReader over calibration items."""

    def __init__(self, items: list[dict[str, np.ndarray]]) -> None:
        self._rows: Iterator[dict[str, np.ndarray]] = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


def int8_qdq(model_bytes: bytes, items: list[dict[str, np.ndarray]]) -> bytes:
    """Static int8 quantization to a QDQ model, calibrated on ``items`` (symmetric, as
    TensorRT wants; weights per output channel, which TensorRT 10 takes and which keeps the
    export's answers well clear of the agreement bar)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes)
        try:
            quantize_static(str(src), str(dst), _Reader(items), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=True, extra_options={"ActivationSymmetric": True,
                                           "WeightSymmetric": True})
        except Exception as exc:
            raise InvalidInput(f"int8 quantization does not apply to this model ({exc}); "
                               "export it with precision fp16", code="export_unsupported"
                               ) from exc
        out = dst.read_bytes()
    if not any(n.op_type == "DequantizeLinear"
               for n in onnx.load_model_from_string(out).graph.node):
        raise InvalidInput("int8 quantization does not apply to this model: none of its "
                           "operators has int8 kernels (its weights live in ONNX-ML operators);"
                           " export it with precision fp16", code="export_unsupported")
    return out


def convert(model_bytes: bytes, precision: str,
            calibration: list[dict[str, np.ndarray]] | None) -> tuple[bytes, list[str]]:
    """(the model for the Orin, notes for the bundle's README)."""
    from .targets import fp16_model

    model, notes = down_convert(onnx.load_model_from_string(model_bytes))
    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration inputs")
        out = int8_qdq(model.SerializeToString(), calibration)
        notes.append("int8 QDQ (onnxruntime static quantization, symmetric, per-channel "
                     "weights); TensorRT builds the engine with --int8 --fp16")
    else:
        out = fp16_model(model.SerializeToString())
        notes.append("float16 for the Orin's GPU; TensorRT builds the engine with --fp16")
    other = unsupported_ops(onnx.load_model_from_string(out))
    if other:
        notes.append("TensorRT 10.3 does not take these operators; run.py falls back to "
                     "onnxruntime for them: " + ", ".join(other))
    return out, notes + [f"built for the Jetson Orin Nano on {JETPACK}"]


def build_engine_script(precision: str) -> str:
    """trtexec with the precision's flags (TensorRT 10: --memPoolSize, no --workspace)."""
    flags = "--int8 --fp16" if precision == "int8" else "--fp16"
    return f"""#!/bin/sh
# Build a TensorRT 10.3 engine for this Jetson Orin Nano ({JETPACK}) from model.onnx.
# precision: {precision}
set -e
cd "$(dirname "$0")"
/usr/src/tensorrt/bin/trtexec --onnx=model.onnx --saveEngine=model.plan {flags} \\
  --memPoolSize=workspace:2048M --verbose > build_engine.log 2>&1 || {{
  echo "trtexec could not build an engine; run.py will use onnxruntime" >&2; exit 0; }}
echo "engine written to model.plan"
"""


DOCKERFILE = f"""# Runtime image for the Jetson Orin Nano: {JETPACK}
FROM {BASE_IMAGE}
WORKDIR /opt/aimarket-model
COPY . .
RUN pip3 install --no-cache-dir -r requirements.txt && sh build_engine.sh
EXPOSE 8080
CMD ["python3", "run.py", "--port", "8080"]
"""

# onnxruntime-gpu wheels for JetPack 6 come from NVIDIA's Jetson index; the CPU wheel of PyPI
# runs everywhere else.
REQUIREMENTS = "onnxruntime>=1.18\nnumpy>=1.24,<2\n"


def requirements(task_requirements: str) -> str:
    """The task pipeline's requirements with the Orin's onnxruntime and numpy pins (JetPack
    6's onnxruntime-gpu wheels are built against numpy 1)."""
    pinned = {line.split(">")[0].split("=")[0].split("<")[0] for line in
              REQUIREMENTS.splitlines()}
    rest = [line for line in task_requirements.splitlines()
            if line and line.split(">")[0].split("=")[0].split("<")[0] not in pinned]
    return REQUIREMENTS + "".join(f"{line}\n" for line in rest)
