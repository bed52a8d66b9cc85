"""Export targets: the model as listed, int8, fp16, the Nano Kit (Jetson Nano) profile and the
Jetson Orin Nano (``jetson-orin``, in ``orin.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from serving import InvalidInput

TARGETS = ("onnx", "onnx-int8", "onnx-fp16", "nano-kit", "jetson-orin")
# The precisions each target offers, its default first.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32",), "onnx-int8": ("int8",), "onnx-fp16": ("fp16",), "nano-kit": ("fp16",),
    "jetson-orin": ("fp16", "int8"),
}
NANO_OPSET = 13  # JetPack 4.6 / TensorRT 8.2 parses ONNX up to opset 13 reliably
# Operators TensorRT 8.2's ONNX parser accepts that small classifiers use; anything else runs
# in onnxruntime on the kit (the runner falls back), and the bundle says so.
TRT_OPS = {
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant",
    "Conv", "ConvTranspose", "Div", "Exp", "Flatten", "Gather", "Gemm", "GlobalAveragePool",
    "Identity", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "ReduceMax", "ReduceMean",
    "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Split",
    "Sqrt", "Squeeze", "Sub", "Tanh", "TopK", "Transpose", "Unsqueeze",
}


def precision_for(target: str, precision: str | None) -> str:
    """The precision an export is built at: the target's default, or one it offers; else
    InvalidInput (``precision_unsupported``)."""
    offered = PRECISIONS.get(target)
    if offered is None:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if precision is None:
        return offered[0]
    if precision not in offered:
        raise InvalidInput(f"target {target} offers precision {' or '.join(offered)}, not "
                           f"{precision}", code="precision_unsupported",
                           details={"target": target, "precisions": list(offered)})
    return precision


def convert(model_bytes: bytes, target: str, precision: str | None = None,
            calibration: list[dict[str, np.ndarray]] | None = None
            ) -> tuple[bytes, list[str]]:
    """(converted model, notes for the bundle's README). ``calibration`` (model inputs)
    is what static int8 quantization is calibrated on."""
    if target == "jetson-orin":
        from . import orin

        return orin.convert(model_bytes, precision_for(target, precision), calibration)
    precision_for(target, precision)
    if target == "onnx":
        return model_bytes, []
    if target == "onnx-int8":
        try:
            return _int8(model_bytes), ["weights quantized to int8 (dynamic quantization)"]
        except Exception as exc:  # e.g. weights that live in ONNX-ML operator attributes
            raise InvalidInput(
                f"int8 quantization does not apply to this model ({exc}); export it as "
                "onnx or onnx-fp16", code="export_unsupported") from exc
    if target == "onnx-fp16":
        return _fp16(model_bytes), ["weights and activations in float16; inputs stay float32"]
    if target == "nano-kit":
        return _nano(model_bytes)
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def _int8(model_bytes: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def fp16_model(model_bytes: bytes) -> bytes:
    """The model in float16 (inputs and outputs stay float32)."""
    return _fp16(model_bytes)


def _fp16(model_bytes: bytes) -> bytes:
    from onnxconverter_common import float16

    model = _drop_float_casts(onnx.load_model_from_string(model_bytes))
    # ONNX-ML operators have no float16 kernels: keep them (and their inputs) in float32.
    ml_ops = sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"})
    converted = float16.convert_float_to_float16(model, keep_io_types=True,
                                                 op_block_list=ml_ops or None)
    return _casts_to_half(_drop_repeated_nodes(converted)).SerializeToString()


def _casts_to_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make a Cast-to-float32 inside the graph cast to float16 where the converter typed its
    output float16 (it retypes the values, not the Cast's ``to``)."""
    half = {v.name for v in model.graph.value_info
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in half:
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
    return model


def _drop_repeated_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes that repeat an earlier one exactly: the converter inserts the Cast after a
    graph input once per pass that meets it (twice when the input also feeds an operator kept
    as it is, e.g. Shape), and onnxruntime refuses two definitions of one name."""
    seen: set[bytes] = set()
    keep = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    if len(keep) < len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return model


def _drop_float_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Cast-to-float32 nodes applied to float32 graph inputs (converters emit them):
    after conversion they would feed float32 into float16 operators."""
    floats = {i.name for i in model.graph.input
              if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    drop = {n.output[0]: n.input[0] for n in model.graph.node
            if n.op_type == "Cast" and n.input[0] in floats
            and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    if not drop or any(o.name in drop for o in model.graph.output):
        return model
    keep = [n for n in model.graph.node if not (n.op_type == "Cast" and n.output[0] in drop)]
    for n in keep:
        n.input[:] = [drop.get(i, i) for i in n.input]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _nano(model_bytes: bytes) -> tuple[bytes, list[str]]:
    model = onnx.load_model_from_string(model_bytes)
    notes = []
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > NANO_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, NANO_OPSET)
            notes.append(f"converted from opset {opset} to {NANO_OPSET} for TensorRT 8.2")
        except Exception as exc:  # some graphs cannot be down-converted
            notes.append(f"kept opset {opset}: down-conversion failed ({type(exc).__name__})")
    fp16 = _fp16(model.SerializeToString())
    other = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in
                    onnx.load_model_from_string(fp16).graph.node
                    if n.domain not in ("", "ai.onnx") or n.op_type not in TRT_OPS})
    if other:
        notes.append("TensorRT does not take these operators; run.py falls back to "
                     "onnxruntime for them: " + ", ".join(other))
    return fp16, notes + ["float16 for the Jetson Nano's GPU"]
