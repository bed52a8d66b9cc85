"""Whether a manifest's task fits the graph it describes: the output layout its detection format
reads, a segmentation map of one score per label, a tokenizer for the inputs it feeds. A
manifest that does not fit is refused at upload with the reason (``task_mismatch``)."""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import InvalidInput
from ..manifest import Manifest

MAX_TOKENIZER_BYTES = 8 * 1024 * 1024
TOKENIZER_NAMES = ("tokenizer.json",)


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, code="task_mismatch")


def _dims(model: onnx.ModelProto, name: str) -> list[int] | None:
    vi = next((o for o in model.graph.output if o.name == name), None)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def check_task_fit(model: onnx.ModelProto, manifest: Manifest) -> None:
    labels = manifest.labels or []
    if manifest.task == "object-detection" and manifest.detection is not None:
        det = manifest.detection
        if det.format == "yolov8":
            name = manifest.outputs[0].name
            dims = _dims(model, name) or manifest.outputs[0].shape
            if len(dims) != 3:
                raise _refuse(f"detection format yolov8 reads one output [N, 4 + C, A]; "
                              f"output '{name}' has shape {dims}")
            if dims[1] != -1 and dims[1] != 4 + len(labels):
                hint = (" (it looks transposed: [N, A, 4 + C])"
                        if dims[2] == 4 + len(labels) else "")
                raise _refuse(f"detection format yolov8 reads output '{name}' as [N, 4 + C, A] "
                              f"with C = {len(labels)} labels, so dimension 1 must be "
                              f"{4 + len(labels)}; it is {dims[1]}{hint}")
        elif det.outputs is not None:
            boxes = _dims(model, det.outputs.boxes)
            if boxes is not None and (len(boxes) != 3 or boxes[-1] not in (-1, 4)):
                raise _refuse(f"detection output boxes '{det.outputs.boxes}' must be [N, K, 4] "
                              f"(x1, y1, x2, y2); it has shape {boxes}")
    if manifest.task == "image-segmentation":
        name = manifest.outputs[0].name
        dims = _dims(model, name) or manifest.outputs[0].shape
        if len(dims) != 4:
            raise _refuse(f"image-segmentation reads output '{name}' as [N, C, H, W] scores; "
                          f"it has shape {dims}")
        if dims[1] not in (-1, 1, len(labels)):
            raise _refuse(f"image-segmentation output '{name}' has {dims[1]} channels; it must "
                          f"have one per label ({len(labels)}) or 1 (a probability map)")
    out = manifest.embedding.output if manifest.embedding else None
    if manifest.task == "text-embedding" and out and out not in {t.name for t in manifest.outputs}:
        raise _refuse(f"embedding.output '{out}' is not an output")


def attach_tokenizer(manifest: Manifest, files: list[Path]) -> Manifest:
    """The manifest with the archive's tokenizer.json in ``text.tokenizer`` (text tasks that
    map tokenizer fields to inputs); refused when such a task has none."""
    text = manifest.text
    if text is None or text.inputs is None:
        return manifest
    found = [f for f in files if f.name in TOKENIZER_NAMES]
    if not found and not text.tokenizer:
        raise _refuse(f"{manifest.task} with text.inputs needs the tokenizer: put the Hugging "
                      "Face tokenizer.json beside the model in the upload archive")
    if not found:
        return manifest
    if found[0].stat().st_size > MAX_TOKENIZER_BYTES:
        raise _refuse(f"tokenizer.json is larger than {MAX_TOKENIZER_BYTES >> 20} MB")
    content = found[0].read_text("utf-8", errors="strict")
    from ..tasks.text import tokenizer

    tokenizer(content, text.max_length, 0)  # refused here when it does not load
    return manifest.model_copy(update={"text": text.model_copy(update={"tokenizer": content})})
