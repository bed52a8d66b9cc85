"""The export compatibility table: for each target, whether a model can be exported (operators
against the target's supported set, opset), with which precisions, and how closely each
export agrees with the hosted model (top-1 agreement for classifiers, max abs difference)."""

from __future__ import annotations

from typing import Any

import onnx

from serving import AimarketError, Manifest

from . import orin
from .bundle import MIN_AGREEMENT, accuracy
from .calibration import choose
from .targets import NANO_OPSET, PRECISIONS, TARGETS, TRT_OPS, convert

CLASSIFIERS = ("image-classification", "tabular-classification")


def _engine_ops(target: str, model: onnx.ModelProto) -> list[str]:
    if target == "jetson-orin":
        return orin.unsupported_ops(model)
    if target == "nano-kit":
        return sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node
                       if n.domain not in ("", "ai.onnx") or n.op_type not in TRT_OPS})
    return []


def table(model_bytes: bytes, manifest: Manifest,
          uploaded: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per target, measured by building each export (without a licence)."""
    model = onnx.load_model_from_string(model_bytes)
    opset = orin.opset_of(model)
    measure = "top1_agreement" if manifest.task in CLASSIFIERS else "max_abs_diff"
    rows = []
    for target in TARGETS:
        results: dict[str, Any] = {}
        reasons: list[str] = []
        for precision in PRECISIONS[target]:
            cal = choose(manifest, uploaded or []).items if precision == "int8" else None
            try:
                converted, _ = convert(model_bytes, target, precision, cal)
                agreement, max_diff = accuracy(model_bytes, converted, manifest)
            except AimarketError as exc:
                reasons.append(f"{precision}: {exc.message}")
                continue
            except Exception as exc:  # a converter's own failure on an unusual graph
                reasons.append(f"{precision}: the export could not be built "
                               f"({type(exc).__name__})")
                continue
            if agreement < MIN_AGREEMENT:
                reasons.append(f"{precision}: agrees with the hosted model on only "
                               f"{agreement:.1%} of samples")
                continue
            results[precision] = {"agreement": round(agreement, 4),
                                  "max_abs_diff": float(f"{max_diff:.4g}")}
        ops = _engine_ops(target, model)
        if ops:
            reasons.append("runs these operators in onnxruntime, not TensorRT: "
                           + ", ".join(ops))
        max_opset = {"nano-kit": NANO_OPSET, "jetson-orin": orin.ORIN_OPSET}.get(target)
        rows.append({"target": target, "exportable": bool(results),
                     "precisions": list(results), "measure": measure, "results": results,
                     "opset": opset, "max_opset": max_opset, "engine_fallback_ops": ops,
                     "notes": reasons})
    return rows
