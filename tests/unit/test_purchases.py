"""The model page's target picker: every target and precision the export package defines,
marked by the compatibility table; a forged choice is refused with a clear code."""

from __future__ import annotations

import pytest

from export import PRECISIONS, TARGETS
from serving import InvalidInput
from storefront.purchases import parse_choice, target_choices


def test_the_picker_offers_every_target_and_marks_what_cannot_be_exported() -> None:
    every = [f"{t}:{p}" for t in TARGETS for p in PRECISIONS[t]]
    unmeasured = target_choices(None)
    assert [c["value"] for c in unmeasured] == every and all(c["ok"] for c in unmeasured)
    table = [{"target": "onnx", "results": {"fp32": {}}}, {"target": "onnx-int8", "results": {}},
             {"target": "jetson-orin", "results": {"fp16": {}}}]
    marked = {c["value"]: c["ok"] for c in target_choices(table)}
    assert marked["onnx:fp32"] and marked["jetson-orin:fp16"] and marked["nano-kit:fp16"]
    assert not marked["onnx-int8:int8"] and not marked["jetson-orin:int8"]


def test_a_choice_names_a_target_and_a_precision_it_offers() -> None:
    assert parse_choice("jetson-orin:int8") == ("jetson-orin", "int8")
    assert parse_choice("onnx") == ("onnx", None)
    with pytest.raises(InvalidInput) as unknown:
        parse_choice("tflite:fp32")
    assert unknown.value.code == "unknown_target"
    with pytest.raises(InvalidInput) as precision:
        parse_choice("onnx:int8")
    assert precision.value.code == "precision_unsupported"
