"""Triton model repositories: one Triton model per listing version, in Triton's standard layout.

```
<repository>/<slug>-v<version>/config.pbtxt
<repository>/<slug>-v<version>/1/model.onnx
<repository>/<slug>-v<version>/1/model.py      (the ``python`` format only)
```

Two formats:

- ``onnxruntime``: ``platform: "onnxruntime_onnx"``, what a full Triton image serves (and what
  ``aimarket triton export-repo`` writes);
- ``python``: a Python-backend model whose ``model.py`` runs onnxruntime on the same
  ``model.onnx`` inside Triton's stub process (what the ``tritonserver`` bundled with
  ``nvidia-pytriton`` can load: it has only the python backend).

``max_batch_size`` is the manifest's largest caller batch for models whose inputs and outputs
all lead with a dynamic dimension, 0 for the others (dims then carry the whole shape). Dynamic
batching follows the listing's serving options: on when ``max_batch_size`` > 1, forming batches
of that many calls (``preferred_batch_size``) within ``batch_wait_ms``. ``instance_group``
count is the listing's ``min_replicas`` (at least 1).

This module imports only the standard library and ``onnx`` (to read the model's tensors).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .backend import ModelRef, parse_model_key

Format = Literal["onnxruntime", "python"]
FORMATS: tuple[Format, ...] = ("onnxruntime", "python")

# ONNX TensorProto element types -> Triton data types
_TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
}


def triton_name(key: str) -> str:
    """The Triton model of a listing version: ``slug@3`` -> ``slug-v3``."""
    slug, version = parse_model_key(key)
    return f"{slug}-v{version}"


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # -1: dynamic


def model_tensors(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs (without initializers) and outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def tensors(values: Iterable[Any]) -> list[Tensor]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(Tensor(v.name, _TRITON_TYPES.get(t.elem_type, "TYPE_FP32"), dims))
        return out

    return ([t for t in tensors(graph.input) if t.name not in initializers],
            tensors(graph.output))


def scalar_rows(ts: list[Tensor]) -> set[str]:
    """Tensors of a batched model that are a batch of scalars (rank 1): on Triton's wire
    they are [batch, 1] (``reshape``)."""
    return {t.name for t in ts if len(t.dims) == 1}


def batched(inputs: list[Tensor], outputs: list[Tensor]) -> bool:
    """Whether every input and output leads with a dynamic (batch) dimension."""
    return all(t.dims and t.dims[0] == -1 for t in inputs + outputs)


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def config_pbtxt(ref: ModelRef, fmt: Format) -> str:
    """The model's ``config.pbtxt`` (protobuf text of Triton's ModelConfig)."""
    inputs, outputs = model_tensors(ref.path)
    batch = batched(inputs, outputs)
    max_batch = ref.max_batch if batch else 0

    def io(kind: str, ts: list[Tensor]) -> str:
        rows = []
        for t in ts:
            dims = t.dims[1:] if batch else t.dims
            # Triton wants dims: a batch of scalars is [ 1 ], reshaped to the model's [ ]
            shape = ", ".join(str(d) for d in dims) or "1"
            # (the python backend has no reshape: model.py reshapes itself)
            reshape = "" if dims or fmt == "python" else " reshape: { shape: [ ] }"
            rows.append(f"  {{ name: {_q(t.name)} data_type: {t.data_type} "
                        f"dims: [ {shape} ]{reshape} }}")
        return f"{kind} [\n" + ",\n".join(rows) + "\n]"

    o = ref.serving
    lines = [f"name: {_q(triton_name(ref.key))}"]
    if fmt == "python":
        lines.append('backend: "python"')
    else:
        lines += ['platform: "onnxruntime_onnx"', 'default_model_filename: "model.onnx"']
    lines += [f"max_batch_size: {max_batch}", io("input", inputs), io("output", outputs)]
    if batch and o.max_batch_size > 1:
        lines.append(
            f"dynamic_batching {{ preferred_batch_size: [ {min(o.max_batch_size, max_batch)} ] "
            f"max_queue_delay_microseconds: {int(o.batch_wait_ms * 1000)} }}")
    lines.append(f"instance_group [ {{ count: {max(1, o.min_replicas)} kind: KIND_CPU }} ]")
    lines.append('version_policy { latest { num_versions: 1 } }')
    return "\n".join(lines) + "\n"


MODEL_PY = '''\
"""aimarket: one listing version as a Triton Python-backend model running onnxruntime."""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        # a batch of scalars travels as [batch, 1]; the model sees [batch]
        rank1 = {t.name for t in self.session.get_inputs() + self.session.get_outputs()
                 if len(t.shape) == 1} if self.batched else set()
        self.flat_in = [n for n in self.inputs if n in rank1]
        self.col_out = {n for n in self.outputs if n in rank1}

    def _run(self, feed):
        for n in self.flat_in:
            feed[n] = feed[n].reshape(-1)
        try:
            return self.session.run(None, feed), None
        except Exception as exc:  # onnxruntime's InvalidArgument: the caller's fault
            kind = "invalid input" if type(exc).__name__ == "InvalidArgument" else "failed"
            return None, pb_utils.TritonError(f"aimarket {kind}: {exc}")

    def _reply(self, outs, err):
        if err is not None:
            return pb_utils.InferenceResponse(output_tensors=[], error=err)
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(n, np.ascontiguousarray(o.reshape(-1, 1) if n in self.col_out else o))
             for n, o in zip(self.outputs, outs)])

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
                 for r in requests]
        if not self.batched or len(feeds) == 1:
            return [self._reply(*self._run(f)) for f in feeds]
        sizes = [f[self.inputs[0]].shape[0] for f in feeds]
        outs, err = self._run({n: np.concatenate([f[n] for f in feeds]) for n in self.inputs})
        if err is not None:  # one bad request spoils the batch: run each on its own
            return [self._reply(*self._run(f)) for f in feeds]
        cuts = np.cumsum(sizes)[:-1]
        parts = [np.split(o, cuts) for o in outs]
        return [self._reply([p[i] for p in parts], None) for i in range(len(feeds))]
'''


def _place(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` (a hard link when both are on one file system)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_model(repository: Path, ref: ModelRef, fmt: Format) -> Path:
    """Write (or rewrite) the listing version's model; returns its folder."""
    folder = repository / triton_name(ref.key)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    _place(ref.path, folder / "1" / "model.onnx")
    if fmt == "python":
        (folder / "1" / "model.py").write_text(MODEL_PY)
    config = folder / "config.pbtxt"
    tmp = folder / "config.pbtxt.tmp"
    tmp.write_text(config_pbtxt(ref, fmt))
    os.replace(tmp, config)
    return folder


def remove_model(repository: Path, key: str) -> None:
    shutil.rmtree(repository / triton_name(key), ignore_errors=True)
