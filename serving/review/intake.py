"""The automated review of an upload: what it is, whether it is safe to run, whether it
matches its manifest, and how it behaves when run in a sandbox.

Every refusal is an InvalidInput with a stable code naming the problem. Files are written
only under ``workdir``; the accepted model is normalised to one self-contained ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..errors import InvalidInput
from ..manifest import Manifest, parse_manifest
from ..runtime import MAX_OPSET, MIN_OPSET, match_io
from .archive import extract, is_archive
from .examples import check_examples
from .external import check_external, embed_external
from .fingerprint import fingerprint, sketch
from .sandbox import smoke_test
from .sniff import refuse_non_onnx
from .taskfit import attach_tokenizer, check_task_fit

ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
MAX_TENSOR_ELEMENTS = 1 << 31
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml", "manifest.json")


@dataclass
class Accepted:
    manifest: Manifest
    data: bytes  # the normalised model: weights embedded
    opset: int
    latency_us: int
    fingerprint: str
    sketch: dict[str, Any]
    findings: list[dict[str, Any]] = field(default_factory=list)


def intake(upload: bytes, manifest_text: str | bytes | None, workdir: Path, *,
           max_bytes: int, sandbox: dict[str, Any] | None = None) -> Accepted:
    findings: list[dict[str, Any]] = []
    files: list[Path] = []
    base = workdir / "upload"
    if upload[:4] == b"PK\x03\x04":
        refuse_non_onnx(upload)  # a torch checkpoint or a Keras file is a zip too
    if is_archive(upload[:512]):
        files = extract(upload, base, max_bytes=max_bytes)
        models = [f for f in files if f.suffix == ".onnx"]
        if len(models) != 1:
            raise InvalidInput(f"the archive must hold exactly one .onnx file, not "
                               f"{len(models)}", code="archive_no_model")
        for f in files:
            if f not in models:
                refuse_non_onnx(f.read_bytes()[:1 << 20] if f.stat().st_size > 0 else b"")
        model_path = models[0]
        if manifest_text is None:
            found = [f for f in files if f.name in MANIFEST_NAMES]
            manifest_text = found[0].read_bytes() if found else None
        findings.append({"code": "archive", "message": f"archive with {len(files)} files"})
    else:
        refuse_non_onnx(upload)
        base.mkdir(parents=True, exist_ok=True)
        model_path = base / "model.onnx"
        model_path.write_bytes(upload)
    if manifest_text is None:
        raise InvalidInput("part 'manifest' (YAML or JSON) is missing", code="missing_manifest")
    manifest = attach_tokenizer(parse_manifest(manifest_text), files)
    check_examples(manifest)

    model = _load(model_path)
    opset = _check_opset(model)
    _check_domains(model)
    _check_sizes(model)
    external = check_external(model, model_path.parent)
    if external:
        embed_external(external, model_path.parent)
        findings.append({"code": "external_data", "message": "weights embedded from "
                         "external data files"})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise InvalidInput(f"the ONNX checker refused the model: {exc}",
                           code="checker_failed") from exc
    match_io(model, manifest)
    check_task_fit(model, manifest)
    data = model.SerializeToString()
    normalised = workdir / "normalised.onnx"
    normalised.write_bytes(data)
    latency = smoke_test(normalised, manifest, **(sandbox or {}))
    return Accepted(manifest, data, opset, latency, fingerprint(model), sketch(model), findings)


def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidInput("the file is not a valid ONNX model (it does not parse)",
                           code="invalid_onnx") from exc
    if not model.graph.node and not model.graph.output:
        raise InvalidInput("the file is not a valid ONNX model (empty graph)",
                           code="invalid_onnx")
    return model


def _check_opset(model: onnx.ModelProto) -> int:
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidInput(f"opset {opset} is outside the supported range "
                           f"{MIN_OPSET}-{MAX_OPSET}", code="unsupported_opset")
    return opset


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    out += _graphs(g)
    return out


def _check_domains(model: onnx.ModelProto) -> None:
    domains = {o.domain for o in model.opset_import}
    domains |= {n.domain for g in _graphs(model.graph) for n in g.node}
    domains |= {n.domain for f in model.functions for n in f.node}
    custom = sorted(d for d in domains if d not in ALLOWED_DOMAINS
                    and d not in {f.domain for f in model.functions})
    if custom:
        raise InvalidInput(
            f"the model uses operators of custom domains {custom}: they need native code "
            "that is not accepted; only standard ONNX and ONNX-ML operators are",
            code="custom_operator", details={"domains": custom})


def _check_sizes(model: onnx.ModelProto) -> None:
    tensors = [t for g in _graphs(model.graph) for t in g.initializer]
    for t in tensors:
        n = 1
        for d in t.dims:
            if d < 0:
                raise InvalidInput(f"initializer '{t.name}' has a negative dimension",
                                   code="absurd_size")
            n *= d
        if n > MAX_TENSOR_ELEMENTS:
            raise InvalidInput(f"initializer '{t.name}' declares {n} elements",
                               code="absurd_size", details={"tensor": t.name, "elements": n})
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
        n = 1
        for d in dims:
            n *= max(d, 1)
        if n > MAX_TENSOR_ELEMENTS:
            raise InvalidInput(f"'{vi.name}' declares {n} elements", code="absurd_size")
