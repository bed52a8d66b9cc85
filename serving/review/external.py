"""External data of an uploaded ONNX model: every tensor of the model, wherever it sits (graph
and subgraph initializers, sparse initializers, node attributes, functions), is checked
before anything is read, then its bytes are embedded from the upload's own files."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_tensor

from ..errors import InvalidInput

KEYS = ("location", "offset", "length", "checksum", "basepath")  # the keys ONNX defines
_DECIMAL = re.compile(r"[0-9]{1,20}")


def _graph_tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    for t in graph.initializer:
        yield f"{where}initializer '{t.name}'", t
    for s in graph.sparse_initializer:
        yield f"{where}sparse initializer '{s.values.name}'", s.values
        yield f"{where}sparse initializer '{s.values.name}' (indices)", s.indices
    yield from _node_tensors(graph.node, where)


def _node_tensors(nodes: list[onnx.NodeProto], where: str
                  ) -> Iterator[tuple[str, TensorProto]]:
    # By field, not by the declared attribute type: a hostile file may declare INT and set t.
    for node in nodes:
        for attr in node.attribute:
            label = f"{node.op_type} node '{node.name}'" if node.name else f"a {node.op_type} node"
            here = f"{where}attribute '{attr.name}' of {label}"
            if attr.HasField("t"):
                yield here, attr.t
            for t in attr.tensors:
                yield here, t
            sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(
                attr.sparse_tensors)
            for s in sparse:
                yield here, s.values
                yield f"{here} (indices)", s.indices
            graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in graphs:
                yield from _graph_tensors(g, f"{here}, subgraph '{g.name}': ")


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """(where it is, the tensor) for every tensor the model holds."""
    yield from _graph_tensors(model.graph, "")
    for f in model.functions:
        yield from _node_tensors(f.node, f"function '{f.name}': ")


def _entries(where: str, t: TensorProto) -> dict[str, str]:
    info: dict[str, str] = {}
    for e in t.external_data:
        if e.key not in KEYS:
            raise InvalidInput(f"{where} has an unknown external data key '{e.key[:60]}'; "
                               f"ONNX defines {list(KEYS)}", code="external_data_invalid")
        if e.key in info:
            raise InvalidInput(f"{where} gives external data '{e.key}' twice",
                               code="external_data_invalid")
        info[e.key] = e.value
    for key in ("offset", "length"):
        if key in info and not _DECIMAL.fullmatch(info[key]):
            raise InvalidInput(f"{where} has an external data {key} of '{info[key][:60]}'; "
                               "it must be a non-negative decimal integer",
                               code="external_data_invalid")
    return info


def _check_one(where: str, t: TensorProto, base: Path) -> None:
    info = _entries(where, t)
    location = info.get("location", "")
    if not location or os.path.isabs(location) or location.startswith(("\\", "/")) \
            or ":" in location:
        raise InvalidInput(f"{where} points its external data at an absolute path "
                           f"'{location[:200]}'",
                           code="external_data_absolute")
    if "\0" in location or ".." in Path(location.replace("\\", "/")).parts:
        raise InvalidInput(f"{where} points its external data outside the upload "
                           f"('{location[:200]}')",
                           code="external_data_traversal")
    try:
        _check_file(where, location, base, info)
    except OSError as exc:  # a name too long, a component that is not a directory, ...
        raise InvalidInput(f"{where} points at '{location[:200]}', which cannot be read "
                           f"({exc.strerror})", code="external_data_invalid") from exc


def _check_file(where: str, location: str, base: Path, info: dict[str, str]) -> None:
    path = base / location
    if any(p.is_symlink() for p in [path, *path.parents] if p.is_relative_to(base)):
        raise InvalidInput(f"{where} reads '{location}' through a symbolic link",
                           code="external_data_symlink")
    if not path.resolve().is_relative_to(base.resolve()):
        raise InvalidInput(f"{where} points outside the upload", code="external_data_traversal")
    if not path.is_file():
        raise InvalidInput(f"{where} needs '{location}', which the upload does not hold",
                           code="external_data_missing")
    if path.stat().st_nlink > 1:
        raise InvalidInput(f"'{location}' is a hard link", code="external_data_symlink")
    if int(info.get("offset", 0)) + int(info.get("length", 0)) > path.stat().st_size:
        raise InvalidInput(f"{where} reads past the end of '{location}'",
                           code="external_data_invalid")


def check_external(model: onnx.ModelProto, base: Path) -> list[TensorProto]:
    """Validate every external data reference of the model against the upload directory
    ``base``; returns the tensors that have one."""
    found = []
    for where, t in all_tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            _check_one(where, t, base)
            found.append(t)
    return found


def embed_external(tensors: list[TensorProto], base: Path) -> None:
    """Read the (checked) external bytes of ``tensors`` into them; the model becomes
    self-contained."""
    for t in tensors:
        try:
            load_external_data_for_tensor(t, str(base))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"external data of tensor '{t.name}' could not be read: {exc}",
                               code="external_data_invalid") from exc
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
