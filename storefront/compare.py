""""Compare with the export" (issue 18): a demo call that runs the chosen target's artifact
(the fp16 / int8 model a buyer would download, on onnxruntime in the demo sandbox) beside the
hosted model on the visitor's own input, and answers both answers and their difference.

The artifact is the export as built for that target and precision, without a licence (and so
without a watermark): what quantization does to this model, not what a mark does. It is built
once per model digest, target and precision and kept in the data dir; its onnxruntime session
is kept per worker. The call is metered as one demo call: the same demo slot, daily quota and
free trial hold as the Try it box (``tryit.demo_call``), and nothing is charged.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from starlette.concurrency import run_in_threadpool

from export import PRECISIONS, TARGETS, convert, precision_for
from serving import InvalidInput, postprocess

from . import edge
from .registry import LiveVersion
from .services import Services
from .tryit import Visitor, demo_call

SESSIONS = 8  # export sessions kept per worker
_sessions: OrderedDict[Path, ort.InferenceSession] = OrderedDict()
_lock = threading.Lock()


def check_choice(target: Any, precision: Any) -> tuple[str, str]:
    """(target, precision) the visitor chose; InvalidInput for anything else."""
    if not isinstance(target, str) or target not in TARGETS:
        raise InvalidInput(f"choose a target among {', '.join(TARGETS)}", code="unknown_target",
                           details={"targets": list(TARGETS)})
    if precision is not None and not isinstance(precision, str):
        raise InvalidInput("precision is a string: " + ", ".join(PRECISIONS[target]),
                           code="precision_unsupported")
    return target, precision_for(target, precision)


def artifact_path(data_dir: Path, live: LiveVersion, target: str, precision: str) -> Path:
    """Where the artifact is kept: per model digest, target and precision, and for a
    calibrated int8 export per calibration upload (new inputs build a new artifact)."""
    name = f"{live.ref.sha256}-{target}-{precision}"
    if precision == "int8" and target == "jetson-orin":
        cal = edge.calibration_path(data_dir, live.listing_id)
        name += "-" + (hashlib.sha256(cal.read_bytes()).hexdigest()[:16] if cal.exists()
                       else "examples")
    return data_dir / "compare" / f"{name}.onnx"


def build_artifact(data_dir: Path, live: LiveVersion, target: str, precision: str) -> Path:
    """The export of the live version for ``target`` at ``precision`` (built on first use;
    InvalidInput ``export_unsupported`` when this model has no such export)."""
    path = artifact_path(data_dir, live, target, precision)
    if path.exists():
        return path
    items = None
    if precision == "int8" and target == "jetson-orin":
        items = edge.calibration_for(data_dir, live.listing_id, live.manifest).items
    converted, _ = convert(live.ref.path.read_bytes(), target, precision, items)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    tmp.write_bytes(converted)
    tmp.replace(path)
    return path


def _session(path: Path) -> ort.InferenceSession:
    with _lock:
        sess = _sessions.get(path)
        if sess is not None:
            _sessions.move_to_end(path)
            return sess
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    with _lock:
        _sessions[path] = sess
        while len(_sessions) > SESSIONS:
            _sessions.popitem(last=False)
    return sess


def run_export(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in inputs.items() if k in wanted})
    return dict(zip(names, outs, strict=True))


async def compare_call(svc: Services, slug: str, target: Any, precision: Any, payload: Any,
                       visitor: Visitor) -> dict[str, Any]:
    """One comparison: the hosted answer, the export's answer, their difference."""
    target, precision = check_choice(target, precision)
    data_dir = svc.settings.data_dir
    live = await svc.registry.get(slug)
    # built before the demo slot is taken: a model without this export is refused uncharged
    path = await run_in_threadpool(build_artifact, data_dir, live, target, precision)

    async def both(live: LiveVersion, inputs: dict[str, np.ndarray], context: Any
                   ) -> dict[str, Any]:
        hosted_out = await svc.backend.infer(live.ref.key, inputs)
        export_out = await run_in_threadpool(run_export, path, inputs)
        return await run_in_threadpool(_answers, live, hosted_out, export_out, context)

    answer = await demo_call(svc, slug, payload, visitor, run=both)
    return {"target": target, "precision": precision, **answer}


def _answers(live: LiveVersion, hosted_out: dict[str, np.ndarray],
             export_out: dict[str, np.ndarray], context: Any) -> dict[str, Any]:
    manifest = live.manifest
    hosted = postprocess(manifest, hosted_out, context)
    exported = postprocess(manifest, export_out, context)
    return {"hosted": hosted, "export": exported,
            "difference": difference(hosted_out, export_out, hosted, exported)}


def difference(hosted_out: dict[str, np.ndarray], export_out: dict[str, np.ndarray],
               hosted: dict[str, Any], exported: dict[str, Any]) -> dict[str, Any]:
    """How the export's answer differs: per float output the largest and mean absolute
    difference; per prediction whether the label (mask pixels, detections, embedding) is the
    same; ``same_answer`` when the task-level answers are equal, ``same_labels`` when every
    label is (None for answers without labels)."""
    outputs: dict[str, Any] = {}
    for name, a in hosted_out.items():
        b = export_out.get(name)
        if b is None or a.dtype.kind != "f" or np.shape(a) != np.shape(b):
            continue
        d = np.abs(a.astype(np.float64) - np.asarray(b, dtype=np.float64))
        outputs[name] = {"max_abs_diff": _num(float(d.max(initial=0.0))),
                         "mean_abs_diff": _num(float(d.mean()) if d.size else 0.0)}
    items = [_item(h, e) for h, e in zip(hosted.get("predictions") or [],
                                         exported.get("predictions") or [], strict=False)]
    for h, e in zip(hosted.get("embeddings") or [], exported.get("embeddings") or [],
                    strict=False):
        items.append({"cosine": _num(_cosine(h, e))})
    labels = [i["same_label"] for i in items if "same_label" in i]
    return {"same_answer": hosted == exported,
            "same_labels": all(labels) if labels else None, "outputs": outputs,
            "predictions": items}


def _item(h: dict[str, Any], e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "label" in h:
        out["same_label"] = h.get("label") == e.get("label")
        if isinstance(h.get("score"), float) and isinstance(e.get("score"), float):
            out["score_diff"] = _num(e["score"] - h["score"])
    if "value" in h:
        out["value_diff"] = _num(float(e["value"]) - float(h["value"]))
    if "mask" in h:
        a, b = _mask(h["mask"]), _mask(e["mask"])
        out["pixels_equal"] = _num(float(np.mean(a == b)) if a.shape == b.shape else 0.0)
    if "detections" in h:
        out["detections"] = [len(h["detections"]), len(e["detections"])]
        out["same_labels"] = (sorted(d["label"] for d in h["detections"])
                              == sorted(d["label"] for d in e["detections"]))
    return out


def _mask(png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / n if n else 0.0


def _num(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else 0.0
