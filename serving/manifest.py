"""The model manifest: the sellers' file format (YAML or JSON) describing a listed model."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError

from .errors import InvalidInput

Task = Literal[
    "image-classification", "tabular-classification", "tabular-regression", "tensor",
    "object-detection", "image-segmentation", "audio-classification", "text-classification",
    "text-embedding",
]
DType = Literal[
    "float32", "float64", "float16", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "bool", "string",
]
IMAGE_TASKS = ("image-classification", "object-detection", "image-segmentation")
TEXT_TASKS = ("text-classification", "text-embedding")
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1, max_length=128)
    dtype: DType
    shape: list[int] = Field(max_length=8)  # [] is a scalar

    @model_validator(mode="after")
    def _dims(self) -> TensorSpec:
        if any(d == 0 or d < -1 for d in self.shape):
            raise ValueError("shape dimensions are positive integers or -1 for a dynamic one")
        return self


class Preprocessing(_Strict):
    """How an image becomes the model's input tensor (image tasks)."""

    size: tuple[int, int] = Field(description="width, height the image is resized to")
    mode: Literal["L", "RGB"] = "L"
    scale: float = 1 / 255
    invert: bool = False  # dark ink on light paper -> light ink on dark, as in sklearn digits
    mean: list[float] | None = Field(default=None, min_length=1, max_length=3)  # per channel,
    std: list[float] | None = Field(default=None, min_length=1, max_length=3)  # after scale
    layout: Literal["NCHW", "NHWC"] | None = None  # inferred from the input's shape if omitted
    letterbox: bool = False  # keep the aspect ratio, pad with grey (detection, segmentation)

    @model_validator(mode="after")
    def _norm(self) -> Preprocessing:
        channels = 3 if self.mode == "RGB" else 1
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, channels):
                raise ValueError(f"'{name}' has {len(v)} values; mode {self.mode} has "
                                 f"{channels} channel(s)")
        if self.std is not None and any(x == 0 for x in self.std):
            raise ValueError("'std' values must not be 0")
        if not (1 <= self.size[0] <= 8192 and 1 <= self.size[1] <= 8192):
            raise ValueError("'size' is width, height, each 1 to 8192")
        return self


class DetectionOutputs(_Strict):
    boxes: str
    scores: str
    classes: str | None = None


class Detection(_Strict):
    """How an object detector's outputs become boxes (task object-detection)."""

    format: Literal["yolov8", "boxes-scores-classes"] = "yolov8"
    outputs: DetectionOutputs | None = None  # boxes-scores-classes: which output is which
    normalized: bool = False  # boxes in 0..1 of the input size rather than input pixels
    score_threshold: float = Field(default=0.25, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, ge=0, le=1)
    max_detections: int = Field(default=100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _outs(self) -> Detection:
        if self.format == "boxes-scores-classes" and self.outputs is None:
            raise ValueError("format boxes-scores-classes needs 'outputs': {boxes, scores, "
                             "classes}")
        return self


class Segmentation(_Strict):
    threshold: float = Field(default=0.5, ge=0, le=1)  # C = 1: a probability map


class Audio(_Strict):
    sample_rate: int = Field(ge=1000, le=192_000)
    max_seconds: float = Field(default=30, gt=0, le=600)


class TextInputs(_Strict):
    """Which model input each of the tokenizer's fields feeds."""

    input_ids: str
    attention_mask: str | None = None
    token_type_ids: str | None = None


class Text(_Strict):
    max_length: int = Field(default=128, ge=1, le=8192)  # tokens (characters: MAX_TEXT_CHARS)
    inputs: TextInputs | None = None  # absent: the model takes a string input itself
    # tokenizer.json from the upload archive; filled at review, not written by the seller
    tokenizer: str | None = Field(default=None, repr=False)


class Embedding(_Strict):
    pooling: Literal["mean", "cls", "none"] = "mean"
    normalize: bool = True
    output: str | None = None  # the output holding the embeddings; the first one if omitted


class Pricing(_Strict):
    per_call: Money
    trial_calls: int = Field(default=0, ge=0, le=1_000_000)
    export_price: Money | None = None
    kit_price: Money | None = None  # a Nano Kit pre-loaded with the export; none: not offered
    # each call a kit's runner serves (jetson-orin exports count them in signed receipts)
    per_edge_call: Money | None = None


class RateLimit(_Strict):
    """Calls per second (and burst) one API key may make to this listing."""

    rps: float = Field(ge=0.001, le=100_000)  # = storefront.config.MIN_RPS
    burst: int = Field(ge=1, le=100_000)


class Manifest(_Strict):
    title: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=5000)
    category: str = Field(min_length=1, max_length=60)
    task: Task
    inputs: list[TensorSpec] = Field(min_length=1, max_length=32)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=32)
    labels: list[str] | None = None
    preprocessing: Preprocessing | None = None
    detection: Detection | None = None
    segmentation: Segmentation | None = None
    audio: Audio | None = None
    text: Text | None = None
    embedding: Embedding | None = None
    feature_names: list[str] | None = None
    pricing: Pricing
    max_batch: int = Field(default=64, ge=1, le=4096)
    rate_limit: RateLimit | None = None
    license: str | None = Field(default=None, max_length=100)
    # Example inputs the demo offers: images as base64 PNG (or data: URLs), table rows as
    # objects keyed by feature name (or value lists), tensor inputs as {name: nested list}.
    examples: list[Any] | None = Field(default=None, max_length=20)

    @model_validator(mode="after")
    def _task_fields(self) -> Manifest:
        if self.task in IMAGE_TASKS and self.preprocessing is None:
            raise ValueError(f"{self.task} needs 'preprocessing' (size, mode, scale)")
        _check_task(self)
        if self.task.startswith("tabular-"):
            if not self.feature_names:
                raise ValueError(f"{self.task} needs 'feature_names'")
            width = self.inputs[0].shape[-1]
            if len(self.inputs) != 1 or (width != -1 and width != len(self.feature_names)):
                raise ValueError(
                    "tabular models take one input whose last dimension equals "
                    f"len(feature_names) = {len(self.feature_names)}"
                )
        if self.task in ("image-classification", "tabular-classification", "object-detection",
                         "image-segmentation", "audio-classification",
                         "text-classification") and not self.labels:
            raise ValueError(f"{self.task} needs 'labels'")
        if self.task == "image-classification" and self.preprocessing is not None:
            w, h = self.preprocessing.size
            channels = 3 if self.preprocessing.mode == "RGB" else 1
            need = w * h * channels
            got = self.inputs[0].shape[1:]
            if len(self.inputs) != 1 or (-1 not in got and _prod(got) != need):
                raise ValueError(
                    f"image preprocessing gives {need} values per image but input "
                    f"'{self.inputs[0].name}' takes shape {self.inputs[0].shape}"
                )
        return self

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


def _check_task(m: Manifest) -> None:
    """The task's own block and the shape of its one input (what review checks again against
    the graph itself)."""
    needs = {"object-detection": "detection", "audio-classification": "audio"}
    block = needs.get(m.task)
    if block and getattr(m, block) is None:
        raise ValueError(f"{m.task} needs '{block}'")
    if m.task in ("object-detection", "image-segmentation"):
        shape = m.inputs[0].shape
        if len(m.inputs) != 1 or len(shape) != 4:
            raise ValueError(f"{m.task} takes one image input of 4 dimensions (NCHW or NHWC), "
                             f"not {[t.shape for t in m.inputs]}")
        if m.labels and len(m.labels) > 255:
            raise ValueError("at most 255 labels")
    if m.task == "object-detection" and m.detection is not None:
        names = {t.name for t in m.outputs}
        if m.detection.format == "boxes-scores-classes" and m.detection.outputs is not None:
            missing = [n for n in m.detection.outputs.model_dump().values()
                       if n is not None and n not in names]
            if missing:
                raise ValueError(f"detection.outputs names {missing}, not outputs of the model "
                                 f"{sorted(names)}")
    if m.task == "audio-classification" and (
            len(m.inputs) != 1 or len(m.inputs[0].shape) not in (1, 2)
            or m.inputs[0].dtype not in ("float32", "float64", "float16")):
        raise ValueError("audio-classification takes one float waveform input [N, samples] "
                         "or [samples]")
    if m.task in TEXT_TASKS:
        text = m.text
        if text is None or text.inputs is None:
            if len(m.inputs) != 1 or m.inputs[0].dtype != "string":
                raise ValueError(f"{m.task} without text.inputs takes one string input (the "
                                 "model tokenizes itself); with a tokenizer.json, map its "
                                 "fields in text.inputs")
        else:
            mapped = {n for n in text.inputs.model_dump().values() if n is not None}
            graph = {t.name for t in m.inputs}
            if mapped != graph:
                raise ValueError(f"text.inputs feeds {sorted(mapped)} but the model takes "
                                 f"{sorted(graph)}")


def _prod(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


class _ManifestLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a manifest needs none, and ``&x [*x]`` makes a cyclic
    value that no JSON (the stored manifest) can hold."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "a manifest uses no YAML aliases (*name)",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_manifest(text: str | bytes) -> Manifest:
    """Parse a YAML or JSON manifest; raise InvalidInput naming every problem."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("manifest is not UTF-8 text", code="invalid_manifest") from exc
    if len(text) > 256_000:
        raise InvalidInput("manifest is larger than 256 kB", code="invalid_manifest")
    try:
        data: Any = yaml.load(text, Loader=_ManifestLoader)
    except RecursionError as exc:
        raise InvalidInput("manifest is nested too deeply", code="invalid_manifest") from exc
    except Exception as exc:
        # Besides YAMLError, PyYAML's scalar constructors raise whatever their parsing hits on
        # a malformed tagged or implicit value (ValueError on "2001-13-01" and "!!int x",
        # AttributeError on "!!timestamp x", IndexError on "!!int"): not a manifest either.
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidInput(
                f"manifest is neither YAML nor JSON: {exc}", code="invalid_manifest"
            ) from exc
    if not isinstance(data, dict):
        raise InvalidInput("manifest must be a mapping of fields", code="invalid_manifest")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidInput(
            "manifest is invalid: "
            + "; ".join(f"{p['field'] or '(root)'}: {p['message']}" for p in problems),
            code="invalid_manifest",
            details=problems,
        ) from exc
    try:  # it is stored as JSON: text JSON cannot hold (a lone surrogate, "\ud800") is refused
        manifest.model_dump_json()
    except PydanticSerializationError as exc:
        raise InvalidInput(f"manifest holds text that is not valid Unicode: {exc}",
                           code="invalid_manifest") from exc
    return manifest
