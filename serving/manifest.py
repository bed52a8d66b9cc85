"""The model manifest: the sellers' file format (YAML or JSON) describing a listed model."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError

from .errors import InvalidInput

Task = Literal["image-classification", "tabular-classification", "tabular-regression", "tensor"]
DType = Literal[
    "float32", "float64", "float16", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "bool",
]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1, max_length=128)
    dtype: DType
    shape: list[int] = Field(min_length=1, max_length=8)

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


class Pricing(_Strict):
    per_call: Money
    trial_calls: int = Field(default=0, ge=0, le=1_000_000)
    export_price: Money | None = None


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
        if self.task == "image-classification" and self.preprocessing is None:
            raise ValueError("image-classification needs 'preprocessing' (size, mode, scale)")
        if self.task.startswith("tabular-"):
            if not self.feature_names:
                raise ValueError(f"{self.task} needs 'feature_names'")
            width = self.inputs[0].shape[-1]
            if len(self.inputs) != 1 or (width != -1 and width != len(self.feature_names)):
                raise ValueError(
                    "tabular models take one input whose last dimension equals "
                    f"len(feature_names) = {len(self.feature_names)}"
                )
        if self.task in ("image-classification", "tabular-classification") and not self.labels:
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
