"""The tensor task made complete: scalar inputs, string (BYTES) tensors in v2 JSON and binary,
and the numpy non-maximum suppression the detection task uses."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from serving import InvalidInput, decode_v2_request, parse_manifest, parse_v2_body
from serving.tasks.vision import nms_per_class

pytestmark = pytest.mark.unit

MANIFEST = parse_manifest(json.dumps({
    "title": "t", "category": "c", "task": "tensor", "pricing": {"per_call": "0.001"},
    "inputs": [{"name": "sr", "dtype": "int64", "shape": []},
               {"name": "text", "dtype": "string", "shape": [-1]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, -1]}]}))


def test_scalar_and_string_inputs_decode_from_v2_json() -> None:
    arrays, _ = decode_v2_request({"inputs": [
        {"name": "sr", "shape": [], "datatype": "INT64", "data": [16000]},
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", "world"]}]},
        MANIFEST)
    assert arrays["sr"].shape == () and int(arrays["sr"]) == 16000
    assert arrays["text"].dtype == object and arrays["text"].tolist() == ["héllo", "world"]


def test_string_inputs_decode_from_the_binary_extension() -> None:
    words = ["a", "héllo"]
    raw = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    sr = np.asarray(8000, np.int64).tobytes()
    header = json.dumps({"inputs": [
        {"name": "sr", "shape": [], "datatype": "INT64",
         "parameters": {"binary_data_size": len(sr)}},
        {"name": "text", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(raw)}}]}).encode()
    body = parse_v2_body(header + sr + raw, str(len(header)))
    arrays, _ = decode_v2_request(body, MANIFEST)
    assert int(arrays["sr"]) == 8000 and arrays["text"].tolist() == words
    cut = json.loads(header)
    cut["inputs"][1]["parameters"]["binary_data_size"] = len(raw) - 1
    short = json.dumps(cut).encode()
    with pytest.raises(InvalidInput, match="runs past"):
        parse_v2_body(short + sr + raw[:-1], str(len(short)))


@pytest.mark.parametrize("item", [
    {"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]},
    {"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]},
    {"name": "sr", "shape": [1], "datatype": "INT64", "data": [1]},
])
def test_wrong_string_or_scalar_inputs_are_refused(item: dict) -> None:
    other = ({"name": "sr", "shape": [], "datatype": "INT64", "data": [1]} if item["name"] ==
             "text" else {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]})
    with pytest.raises(InvalidInput):
        decode_v2_request({"inputs": [item, other]}, MANIFEST)


def test_nms_is_per_class_and_keeps_the_best_first() -> None:
    boxes = np.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]],
                       dtype=np.float64)
    scores = np.asarray([0.8, 0.9, 0.7, 0.3])
    classes = np.asarray([0, 0, 1, 0])
    keep = nms_per_class(boxes, scores, classes, 0.45, 10)
    assert keep.tolist() == [1, 2, 3]  # 0 is 1's twin; 2 overlaps too but is another class
    assert nms_per_class(boxes, scores, classes, 0.45, 2).tolist() == [1, 2]
