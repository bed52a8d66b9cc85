"""Calibration inputs for static int8 quantization: the listing's example inputs, inputs the
seller uploads (an ``.npz`` of the model's inputs, or the task's request bodies), and generated
inputs only as a last resort (the bundle says which it got)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving import InvalidInput, Manifest, prepare, sample_inputs

Feeds = dict[str, np.ndarray]
MAX_ITEMS = 512  # calibration items kept per listing
MAX_NPZ_BYTES = 256 * 1024 * 1024  # uncompressed, over all arrays of an upload
GENERATED = 64


@dataclass(frozen=True)
class Calibration:
    items: list[Feeds]
    source: str  # what the bundle says it was calibrated on


def example_payload(manifest: Manifest, example: Any) -> dict[str, Any]:
    """A manifest example as the task-level request body the demo sends."""
    if manifest.task == "image-classification":
        return {"image": "".join(example.split()) if isinstance(example, str) else example}
    if manifest.task.startswith("tabular-"):
        return {"rows": [example]}
    return {"inputs": example}


def from_examples(manifest: Manifest) -> list[Feeds]:
    items = []
    for example in manifest.examples or []:
        try:
            items.append(prepare(manifest, example_payload(manifest, example)))
        except InvalidInput:  # review refuses such examples; an old listing may still hold one
            continue
    return items


def from_bodies(manifest: Manifest, bodies: Any) -> list[Feeds]:
    """Request bodies of the task (``/v1/models/{slug}/predict``) -> model inputs."""
    if not isinstance(bodies, list) or not bodies:
        raise InvalidInput("give 'bodies': a non-empty list of request bodies of the task",
                           code="invalid_calibration")
    if len(bodies) > MAX_ITEMS:
        raise InvalidInput(f"at most {MAX_ITEMS} calibration bodies", code="invalid_calibration")
    items = []
    for i, body in enumerate(bodies):
        try:
            items.append(prepare(manifest, body))
        except InvalidInput as exc:
            raise InvalidInput(f"calibration body {i}: {exc.message}",
                               code="invalid_calibration", details={"body": i}) from exc
    return items


def from_npz(manifest: Manifest, data: bytes) -> list[Feeds]:
    """An ``.npz`` with one array per model input (batched on the first axis when the
    input's first dimension is dynamic) -> model inputs. Pickled objects are refused."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if sum(i.file_size for i in zf.infolist()) > MAX_NPZ_BYTES:
                raise InvalidInput("the .npz unpacks to more than 256 MiB",
                                   code="invalid_calibration")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except InvalidInput:
        raise
    except Exception as exc:  # not a zip, a pickled array, a bad header
        raise InvalidInput(f"not a readable .npz of plain arrays ({type(exc).__name__})",
                           code="invalid_calibration") from exc
    names = [t.name for t in manifest.inputs]
    if sorted(arrays) != sorted(names):
        raise InvalidInput(f"the .npz must hold exactly the model's inputs {names}, not "
                           f"{sorted(arrays)[:32]}", code="invalid_calibration")
    feeds: Feeds = {}
    for spec in manifest.inputs:
        arr = arrays[spec.name]
        if spec.dtype == "string" or arr.dtype.kind not in "biuf":
            raise InvalidInput(f"input {spec.name!r}: numbers only in an .npz (send request "
                               "bodies for text inputs)", code="invalid_calibration")
        fixed = all(d == -1 or d == a for d, a in zip(spec.shape, arr.shape, strict=False))
        if arr.ndim != len(spec.shape) or not fixed:
            raise InvalidInput(f"input {spec.name!r} takes shape {spec.shape}, the .npz "
                               f"holds {list(arr.shape)}", code="invalid_calibration")
        feeds[spec.name] = arr.astype(spec.dtype)
    if not all(t.shape and t.shape[0] == -1 for t in manifest.inputs):
        return [feeds]  # not batched: one item
    n = min(len(a) for a in feeds.values())
    if n == 0 or any(len(a) != n for a in feeds.values()):
        raise InvalidInput("every input of the .npz needs the same number of rows (at least "
                           "one)", code="invalid_calibration")
    return [{k: a[i:i + 1] for k, a in feeds.items()} for i in range(min(n, MAX_ITEMS))]


def generated(manifest: Manifest) -> list[Feeds]:
    items = []
    for seed in range(GENERATED):
        feeds = sample_inputs(manifest, batch=1, seed=seed)
        items.append({k: (a * 16).astype(a.dtype) if a.dtype.kind == "f" else a
                      for k, a in feeds.items()})
    return items


def choose(manifest: Manifest, uploaded: list[Feeds]) -> Calibration:
    """The listing's examples and the seller's uploads; generated inputs when there are none."""
    examples = from_examples(manifest)
    parts = [f"{len(examples)} example inputs of the listing"] if examples else []
    if uploaded:
        parts.append(f"{len(uploaded)} calibration inputs uploaded by the seller")
    if examples or uploaded:
        return Calibration(examples + uploaded, "calibrated on " + " and ".join(parts))
    return Calibration(generated(manifest),
                       f"calibrated on {GENERATED} GENERATED random inputs: the listing has no "
                       "example inputs and the seller uploaded no calibration inputs, so int8 "
                       "accuracy on real data may be lower than measured here")


def save(items: list[Feeds]) -> bytes:
    """Items as one .npz (keys ``<item>:<input>``)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"{i:05d}:{k}": a for i, feeds in enumerate(items)
                                for k, a in feeds.items()})
    return buf.getvalue()


def load(data: bytes) -> list[Feeds]:
    """What ``save`` wrote."""
    items: dict[int, Feeds] = {}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        for key in npz.files:
            i, _, name = key.partition(":")
            items.setdefault(int(i), {})[name] = npz[key]
    return [items[i] for i in sorted(items)]
