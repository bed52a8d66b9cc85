"""Offline verification of a bundle: signature, checksums, watermark."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import onnx

from .signing import verify_signature


class VerifyError(Exception):
    """The bundle is not what the marketplace issued."""


def verify(bundle: Path | bytes, public_pem: str) -> dict[str, Any]:
    """The license of an intact bundle; VerifyError saying what is wrong otherwise."""
    try:
        zf = zipfile.ZipFile(bundle if isinstance(bundle, Path) else io.BytesIO(bundle))
        files = {n: zf.read(n) for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise VerifyError(f"not a readable bundle: {exc}") from exc
    for required in ("SHA256SUMS", "license.json", "model.onnx"):
        if required not in files:
            raise VerifyError(f"the bundle has no {required}")
    listed: dict[str, str] = {}
    for line in files["SHA256SUMS"].decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, data in files.items():
        if name == "SHA256SUMS":
            continue
        if name not in listed:
            raise VerifyError(f"{name} is not in SHA256SUMS: it was added after issue")
        if hashlib.sha256(data).hexdigest() != listed[name]:
            raise VerifyError(f"{name} was modified: its checksum does not match SHA256SUMS")
    missing = sorted(set(listed) - set(files))
    if missing:
        raise VerifyError(f"files listed in SHA256SUMS are missing: {missing}")
    try:
        doc = json.loads(files["license.json"])
        body, signature = doc["license"], doc["signature"]
    except (ValueError, KeyError, TypeError) as exc:
        raise VerifyError("license.json is malformed") from exc
    if not verify_signature(public_pem, body, signature):
        raise VerifyError("license.json's signature is not the marketplace's: it was edited "
                          "or signed by someone else")
    if hashlib.sha256(files["model.onnx"]).hexdigest() != body.get("model_sha256"):
        raise VerifyError("model.onnx is not the model this license was issued for")
    try:
        model = onnx.load_model_from_string(files["model.onnx"])
    except Exception as exc:
        raise VerifyError("model.onnx does not parse") from exc
    mark = {p.key: p.value for p in model.metadata_props}.get("aimarket_license_id")
    if mark != body.get("license_id"):
        raise VerifyError("the model's watermark does not match the license id")
    return body
