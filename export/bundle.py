"""Build a signed, buyer-bound bundle: the converted model (watermarked with the license id),
its manifest, a standalone predict.py, a README, license.json signed with the platform's key,
an accuracy report and SHA256SUMS."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from serving import InvalidInput, Manifest, sample_inputs
from serving import errors as serving_errors

from . import orin, receipts, taskcode, templates, watermark
from .calibration import Calibration, choose
from .signing import Signer
from .targets import convert, precision_for

MIN_AGREEMENT = 0.95
MARK_AGREEMENT = 0.995  # the watermarked model against the unmarked one
SAMPLES = 256


@dataclass(frozen=True)
class Bundle:
    data: bytes  # the zip
    sha256: str
    agreement: float
    max_diff: float
    notes: list[str]
    precision: str = "fp32"
    watermarked: bool = False


def build(model_bytes: bytes, manifest: Manifest, target: str, license_info: dict[str, Any],
          signer: Signer, *, min_agreement: float = MIN_AGREEMENT, precision: str | None = None,
          calibration: Calibration | None = None, watermark_key: bytes | None = None
          ) -> Bundle:
    """Watermark (with ``watermark_key``), convert, check accuracy, sign and zip. Raises
    InvalidInput (``export_accuracy``) when the converted model disagrees with the original
    too often."""
    task_files = taskcode.bundle_files(manifest, target)  # refuses a task the target cannot run
    edge_priced = manifest.pricing.per_edge_call is not None
    if edge_priced and target != "jetson-orin":
        raise InvalidInput(
            f"this listing is priced per edge call ({manifest.pricing.per_edge_call} USD): "
            f"export it for jetson-orin, whose runner counts the calls in signed receipts; "
            f"a {target} export could not", code="export_unsupported")
    precision = precision_for(target, precision)
    cal = None
    if precision == "int8" and target == "jetson-orin":
        cal = calibration or choose(manifest, [])
    items = cal.items if cal else None
    converted, notes, mark = _mark_and_convert(
        model_bytes, manifest, target, precision, items, watermark_key,
        license_info["license_id"], min_agreement)
    if cal is not None:
        notes.append(cal.source)
    notes.append(str(mark["note"]) if "note" in mark else "not watermarked")
    agreement, max_diff = accuracy(model_bytes, converted, manifest)
    if agreement < min_agreement:
        raise InvalidInput(
            f"the {target} export agrees with the listed model on {agreement:.2%} of "
            f"{SAMPLES} sample inputs (largest output difference {max_diff:.3g}); at least "
            f"{min_agreement:.0%} is required", code="export_accuracy",
            details={"agreement": agreement, "max_diff": max_diff})
    model = onnx.load_model_from_string(converted)
    entry = model.metadata_props.add()
    entry.key, entry.value = "aimarket_license_id", license_info["license_id"]
    model_bytes_out = model.SerializeToString()
    license_body = {**license_info, "target": target,
                    "model_sha256": hashlib.sha256(model_bytes_out).hexdigest()}
    files: dict[str, bytes] = {
        "model.onnx": model_bytes_out,
        "manifest.json": manifest.model_dump_json(indent=2).encode(),
        **task_files,  # predict.py, requirements.txt and the pipeline predict.py runs
        "license.json": json.dumps({"license": license_body,
                                    "signature": signer.sign(license_body)}, indent=2).encode(),
        "accuracy.json": json.dumps({"samples": SAMPLES, "agreement": agreement,
                                     "max_abs_diff": max_diff, "precision": precision,
                                     "watermark": mark,
                                     **({"calibration": cal.source} if cal else {})},
                                    indent=2).encode(),
        "README.md": templates.README.format(
            title=manifest.title, version=license_info["version"], target=target,
            licensee=license_info["licensee"], license_id=license_info["license_id"],
            terms=license_info["terms"], samples=SAMPLES, agreement=agreement,
            max_diff=max_diff, notes="\n".join(f"- {n}" for n in notes)).encode(),
    }
    if target == "nano-kit":
        fmt = {"title": manifest.title, "license_id": license_info["license_id"]}
        files.update({
            "build_engine.sh": templates.BUILD_ENGINE.encode(),
            "Dockerfile": templates.DOCKERFILE.encode(),
            "aimarket-model.service": templates.SERVICE.format(**fmt).encode(),
            "run.py": templates.RUNNER.encode(),
            "errors.py": Path(serving_errors.__file__).read_bytes(),
        })
    if target == "jetson-orin":
        fmt = {"title": manifest.title, "license_id": license_info["license_id"]}
        files.update({
            "requirements.txt": orin.requirements(task_files["requirements.txt"].decode()
                                                  ).encode(),
            "build_engine.sh": orin.build_engine_script(precision).encode(),
            "Dockerfile": orin.DOCKERFILE.encode(),
            "aimarket-model.service": templates.SERVICE.format(**fmt).encode(),
            "run.py": templates.RUNNER.encode(),
            "errors.py": Path(serving_errors.__file__).read_bytes(),
        })
    if edge_priced:
        files.update(_edge_files(manifest, license_info["license_id"], signer))
        files["requirements.txt"] += b"cryptography>=41\n"
    files["SHA256SUMS"] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    ).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    data = buf.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest(), agreement, max_diff, notes,
                  precision, bool(mark["marked"]))


def _edge_files(manifest: Manifest, license_id: str, signer: Signer) -> dict[str, bytes]:
    """The kit's call metering: the export's own receipt key, what it meters, and the receipt
    code (export/receipts.py, the marketplace's own verifier) the runner imports."""
    key = signer.edge_key(license_id)
    info = {"license_id": license_id, "per_edge_call": str(manifest.pricing.per_edge_call),
            "currency": "USD", "genesis": receipts.genesis(license_id),
            "public_key": base64.b64encode(receipts.public_raw(key)).decode(),
            "sync": "aimarket kit sync <this folder> (POST /v1/edge-usage)"}
    return {"edge-key.pem": receipts.private_pem(key),
            "edge.json": json.dumps(info, indent=2).encode(),
            "receipts.py": Path(receipts.__file__).read_bytes()}


def _mark_and_convert(model_bytes: bytes, manifest: Manifest, target: str, precision: str,
                      items: list[dict[str, np.ndarray]] | None, key: bytes | None,
                      license_id: str, min_agreement: float
                      ) -> tuple[bytes, list[str], dict[str, Any]]:
    """(the converted export, notes, what the bundle says about its mark).

    The mark has its own agreement budget: the marked model agrees with the unmarked one on at
    least ``MARK_AGREEMENT`` of the samples, and the marked *export* (after fp16 or int8) must
    still clear ``min_agreement`` and still carry the mark reliably (z-score at least twice
    the detection threshold). A lossy conversion can tip a few borderline samples either way,
    so each candidate mark (strongest first) is converted and checked; the first that fits is
    kept. When none does, the export is built unmarked and says so, rather than
    shipping a model whose answers the mark pushed under the export's accuracy bar."""
    if key is None:
        converted, notes = convert(model_bytes, target, precision, items)
        return converted, notes, {"marked": False}
    weights = watermark.capacity(onnx.load_model_from_string(model_bytes))
    if weights < watermark.MIN_WEIGHTS:
        converted, notes = convert(model_bytes, target, precision, items)
        return converted, notes, {"marked": False, "weights": weights, "note": (
            f"not watermarked: the model has {weights} weights in large float tensors, fewer "
            f"than the {watermark.MIN_WEIGHTS} a reliable mark needs; the licence is recorded "
            "in license.json and the model's metadata only")}
    tried = 0
    for marked, mark in _marks(model_bytes, manifest, key, license_id, weights):
        tried += 1
        converted, notes = convert(marked, target, precision, items)
        if converted != marked:
            if accuracy(model_bytes, converted, manifest)[0] < min_agreement:
                continue  # this mark tipped too many borderline samples: try a weaker one
            z = watermark.export_score(model_bytes, converted, key, license_id,
                                       int(mark["variant"]))
            if z < 2 * watermark.THRESHOLD:
                continue  # the conversion's rounding drowned it: not a reliable mark
            mark = {**mark, "export_z": round(z, 1)}
        return converted, notes, mark
    converted, notes = convert(model_bytes, target, precision, items)
    reason = ("every mark strong enough to survive a float16 conversion changed this model's "
              f"answers on more than {1 - MARK_AGREEMENT:.1%} of the samples") if not tried else (
              f"each of the {tried} marks tried either pushed the {precision} export under "
              f"{min_agreement:.0%} agreement with the listed model or did not survive its "
              "conversion reliably")
    return converted, notes, {"marked": False, "weights": weights,
                              "note": f"not watermarked: {reason}"}


def _marks(model_bytes: bytes, manifest: Manifest, key: bytes, license_id: str, weights: int
           ) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """The licence's candidate marks, strongest first (at each strength, each of its
    ``VARIANTS`` re-keyed patterns): each leaves the model's answers alone
    (agreement with the unmarked model >= ``MARK_AGREEMENT``) and would survive a float16
    conversion (z-score at least twice the detection threshold)."""
    for step in range(5):
        strength = watermark.STRENGTH / 2 ** step
        for variant in range(watermark.VARIANTS):
            marked = watermark.embed(model_bytes, key, license_id, strength, variant)
            assert marked is not None
            if watermark.fp16_score(model_bytes, marked, key, license_id, variant
                                    ) < 2 * watermark.THRESHOLD:
                return  # weaker marks would not survive a float16 conversion either
            agreement, _ = accuracy(model_bytes, marked, manifest)
            if agreement >= MARK_AGREEMENT:
                yield marked, {"marked": True, "weights": weights, "strength": strength,
                               "variant": variant, "agreement_with_unmarked": agreement,
                               "note": (f"watermarked for this licence in {weights} weights "
                                        f"(agreement with the unmarked model {agreement:.4f})")}


# tasks whose answer is a label: an export agrees where it gives the same label
LABELLED = ("image-classification", "tabular-classification", "audio-classification",
            "text-classification")
DETECTION_IOU = 0.8


def accuracy(original: bytes, converted: bytes, manifest: Manifest) -> tuple[float, float]:
    """(share of sample inputs on which both models give the same answer, largest absolute
    difference of any float output)."""
    feeds = sample_inputs(manifest, batch=SAMPLES, seed=7)
    for name, arr in feeds.items():  # spread samples over a realistic range
        if arr.dtype.kind == "f":
            feeds[name] = (arr * 16).astype(arr.dtype)
    a, b = _run(original, feeds), _run(converted, feeds)
    max_diff = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
                    for k in a if a[k].dtype.kind == "f" and k in b), default=0.0)
    if manifest.task in LABELLED:
        same = _labels(a, manifest) == _labels(b, manifest)
    elif manifest.task == "object-detection":
        same = np.asarray(_same_detections(a, b, manifest))
    else:
        first = manifest.outputs[0].name
        same = np.isclose(a[first], b[first], rtol=1e-2, atol=1e-2).reshape(SAMPLES, -1).all(1)
    return float(np.mean(same)), max_diff


def _same_detections(a: dict[str, np.ndarray], b: dict[str, np.ndarray], manifest: Manifest
                     ) -> list[bool]:
    """Per sample: both models find the same objects (same labels, boxes overlapping by
    ``DETECTION_IOU``), after the listing's own score threshold and NMS: raw heads differ
    where no box is kept, and a peak can move between two equal anchors."""
    from serving.tasks import postprocess

    found = [postprocess(manifest, out)["predictions"] for out in (a, b)]
    return [_match(x["detections"], y["detections"]) for x, y in zip(*found, strict=True)]


def _match(xs: list[dict[str, Any]], ys: list[dict[str, Any]]) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        hit = next((y for y in left if y["label"] == x["label"]
                    and _iou(x["box"], y["box"]) >= DETECTION_IOU), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


def _iou(p: list[float], q: list[float]) -> float:
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
    return w * h / union if union > 0 else 1.0


def _run(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def _labels(out: dict[str, np.ndarray], manifest: Manifest) -> np.ndarray:
    for t in manifest.outputs:
        if np.dtype(t.dtype).kind in "iu":
            return np.asarray(out[t.name]).reshape(-1)
    probs = next(out[t.name] for t in manifest.outputs if len(t.shape) == 2)
    return np.argmax(probs, axis=1)
