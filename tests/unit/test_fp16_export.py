"""The float16 export of graphs onnxconverter-common gets wrong on its own: a float input that
also feeds Shape (its Cast inserted twice), and a Cast to float inside the graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.targets import fp16_model


def _model() -> bytes:
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Greater", ["doubled", "one"], ["big"]),
        helper.make_node("Cast", ["big"], ["bigf"], to=f),
        helper.make_node("Mul", ["doubled", "bigf"], ["kept"]),
        helper.make_node("Reshape", ["kept", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", f, ["N", 3])],
        [helper.make_tensor_value_info("y", f, ["N", 3])],
        initializer=[numpy_helper.from_array(np.asarray(2, np.float32), "two"),
                     numpy_helper.from_array(np.asarray(1, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_the_fp16_export_of_an_input_shared_with_shape_and_an_inner_cast_runs() -> None:
    x = np.asarray([[0.1, 0.6, 2.0], [1.0, -3.0, 0.4]], np.float32)
    want = ort.InferenceSession(_model()).run(None, {"x": x})[0]
    half = fp16_model(_model())
    got = ort.InferenceSession(half).run(None, {"x": x})[0]
    assert got.dtype == np.float32  # inputs and outputs stay float32
    np.testing.assert_allclose(got, want, rtol=1e-3)
    types = {i.name: i.data_type for i in onnx.load_model_from_string(half).graph.initializer}
    assert types["two"] == TensorProto.FLOAT16  # the weights did go to float16


def test_a_detectors_export_agreement_is_on_the_boxes_it_keeps() -> None:
    """Two raw heads that differ only below the score threshold agree; a moved box does not."""
    from export.bundle import _same_detections
    from serving.manifest import Manifest

    manifest = Manifest.model_validate({
        "title": "d", "category": "vision", "task": "object-detection",
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 64, 64]}],
        "outputs": [{"name": "out", "dtype": "float32", "shape": [-1, 5, 2]}],
        "labels": ["cat"], "preprocessing": {"size": [64, 64], "mode": "RGB"},
        "detection": {"format": "yolov8"}, "pricing": {"per_call": "0.001"}})
    head = np.asarray([[[20, 40], [20, 40], [10, 8], [10, 8], [0.9, 0.1]]], np.float32)
    quiet = head.copy()
    quiet[0, 4, 1] = 0.2  # a score that stays under the threshold
    moved = head.copy()
    moved[0, 0, 0] = 26  # the kept box moves by more than half its width
    assert _same_detections({"out": head}, {"out": quiet}, manifest) == [True]
    assert _same_detections({"out": head}, {"out": moved}, manifest) == [False]
