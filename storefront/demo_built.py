"""Demo-catalog listings of the task families no installed package ships a usable model for,
trained or assembled at start from what ships with every install:

- object-detection: a digit finder, an MLP trained on scikit-learn's 8x8 digits laid out on
  generated pages, run as a sliding window (two convolutions) with a YOLOv8 head
- audio-classification: a phone-keypad (DTMF) tone decoder assembled from the ITU-T Q.23
  frequencies: a windowed DFT at each tone as one matrix product
- text-classification: a Python-question router, naive Bayes over the Python language
  reference that ships with CPython (``pydoc_data``), with a WordPiece tokenizer trained on it
  by ``tokenizers`` and shipped as tokenizer.json beside the model
- text-embedding: word vectors of the same reference (PPMI and a truncated SVD), mean pooled

Each builder is cached for the process: the demo catalog is seeded by every app start.
"""

from __future__ import annotations

import base64
import io
import zipfile
from functools import cache
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Built = tuple[bytes, dict[str, Any]]


def _graph(name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any],
           init: dict[str, Any]) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=[
        numpy_helper.from_array(np.asarray(v), k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def archive(files: dict[str, bytes | str]) -> bytes:
    """A zip upload: the model beside its tokenizer.json (or any other named files)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


# -- object detection: digits on a page -------------------------------------------------------
PAGE = 48  # the model's input, in pixels: a digit is 8 of them, as in scikit-learn's digits
GLYPH = 8


def digit_page(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray
               ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A page of digits on lines (light ink on black, 0-1): the page and (digit, x, y) of each."""
    page = np.zeros((PAGE, PAGE), np.float32)
    where = []
    y = int(rng.integers(0, 3))
    while y + GLYPH <= PAGE:
        x = int(rng.integers(0, 4))
        while x + GLYPH <= PAGE:
            k = int(rng.integers(len(images)))
            page[y:y + GLYPH, x:x + GLYPH] = images[k]
            where.append((int(targets[k]), x, y))
            x += GLYPH + int(rng.integers(2, 7))
        y += GLYPH + int(rng.integers(5, 9))  # lines 5 pixels apart or more
    return page, where


def _windows(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Training windows: a digit (label 1 + digit) within one pixel of a window, else
    background (0), drawn from generated pages so that gaps and neighbours are seen."""
    from numpy.lib.stride_tricks import sliding_window_view

    feats, labels = [], []
    pad = np.zeros((len(images), GLYPH + 4, GLYPH + 4), np.float32)
    pad[:, 2:-2, 2:-2] = images
    for _ in range(2):  # every digit, centred or one pixel off
        dy, dx = rng.integers(-1, 2, len(images)), rng.integers(-1, 2, len(images))
        feats.append(np.stack([pad[i, 2 + a:2 + a + GLYPH, 2 + b:2 + b + GLYPH]
                               for i, (a, b) in enumerate(zip(dy, dx, strict=True))]))
        labels.append(targets + 1)
    for _ in range(90):
        page, where = digit_page(rng, images, targets)
        win = sliding_window_view(page, (GLYPH, GLYPH))
        lab = np.zeros(win.shape[:2], np.int64)
        near = np.zeros(win.shape[:2], bool)  # 2 to 6 pixels off a digit: the hard cases
        for _, x, y in where:
            near[max(y - 6, 0):y + 7, max(x - 6, 0):x + 7] = True
        for digit, x, y in where:
            lab[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = digit + 1
        pos = np.argwhere(lab > 0)
        hard, easy = np.argwhere((lab == 0) & near), np.argwhere((lab == 0) & ~near)
        hard = hard[rng.choice(len(hard), min(120, len(hard)), replace=False)]
        easy = easy[rng.choice(len(easy), min(40, len(easy)), replace=False)]
        for p in (pos, hard, easy):
            feats.append(win[p[:, 0], p[:, 1]])
            labels.append(lab[p[:, 0], p[:, 1]])
    return (np.concatenate(feats).reshape(-1, GLYPH * GLYPH).astype(np.float32),
            np.concatenate(labels))


def _finder_graph(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> bytes:
    """The window classifier as convolutions over the page; a window's class scores count
    only where they peak in their 5x5 neighbourhood; one 8x8 box per window."""
    hidden, classes = w1.shape[1], w2.shape[1]
    side = PAGE - GLYPH + 1
    anchors = side * side
    col, row = np.meshgrid(np.arange(side), np.arange(side))
    boxes = np.stack([col.ravel() + GLYPH / 2, row.ravel() + GLYPH / 2,
                      np.full(anchors, GLYPH), np.full(anchors, GLYPH)])[None]
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "w1", "b1"], ["h"]), n("Relu", ["h"], ["hr"]),
        n("Conv", ["hr", "w2", "b2"], ["logits"]), n("Softmax", ["logits"], ["p"], axis=1),
        n("Slice", ["p", "from1", "to", "ax1"], ["digits"]),  # background's channel dropped
        n("ReduceMax", ["digits", "ax1"], ["best"], keepdims=1),
        n("MaxPool", ["best"], ["near"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        n("Equal", ["best", "near"], ["peak"]),
        n("Cast", ["peak"], ["peakf"], to=TensorProto.FLOAT),
        n("Mul", ["digits", "peakf"], ["peaks"]),
        n("Reshape", ["peaks", "score_shape"], ["scores"]),
        n("Shape", ["image"], ["batch"], end=1),
        n("Concat", ["batch", "box_shape"], ["boxes_shape"], axis=0),
        n("Expand", ["anchors", "boxes_shape"], ["boxes"]),
        n("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    f = TensorProto.FLOAT
    return _graph("digit-finder", nodes,
                  [helper.make_tensor_value_info("image", f, ["N", 1, PAGE, PAGE])],
                  [helper.make_tensor_value_info("output0", f, ["N", 4 + classes - 1, anchors])],
                  {"w1": w1.T.reshape(hidden, 1, GLYPH, GLYPH).astype(np.float32),
                   "b1": b1.astype(np.float32),
                   "w2": w2.T.reshape(classes, hidden, 1, 1).astype(np.float32),
                   "b2": b2.astype(np.float32), "from1": np.asarray([1], np.int64),
                   "to": np.asarray([classes], np.int64), "ax1": np.asarray([1], np.int64),
                   "score_shape": np.asarray([0, classes - 1, anchors], np.int64),
                   "box_shape": np.asarray([4, anchors], np.int64),
                   "anchors": boxes.astype(np.float32)})


def page_png(page: np.ndarray, scale: int = 6) -> str:
    """A page (light ink, 0-1) as a base64 PNG of dark ink on white paper, ``scale`` times."""
    ink = (255 - page * 255).clip(0, 255).astype(np.uint8)
    return _png(np.kron(ink, np.ones((scale, scale), np.uint8)))


@cache
def digit_finder() -> Built:
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    images, targets = digits.images / 16.0, digits.target
    feats, labels = _windows(np.random.default_rng(0), images, targets)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=25, batch_size=512,
                        learning_rate_init=0.005, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(feats, labels)
    data = _finder_graph(clf.coefs_[0], clf.intercepts_[0], clf.coefs_[1], clf.intercepts_[1])
    example_rng = np.random.default_rng(7)
    return data, {
        "title": "Digit finder",
        "description": "Finds handwritten digits on a page and reads each one: a box and a "
                       "label per digit. A small MLP trained at start on scikit-learn's 8x8 "
                       "digits laid out on generated pages, run as a sliding window. Send dark "
                       "ink on light paper, digits about a sixth of the page's height.",
        "category": "vision", "task": "object-detection",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, PAGE, PAGE]}],
        "outputs": [{"name": "output0", "dtype": "float32",
                     "shape": [-1, 14, (PAGE - GLYPH + 1) ** 2]}],
        "labels": [str(i) for i in range(10)],
        "preprocessing": {"size": [PAGE, PAGE], "mode": "L", "invert": True},
        "detection": {"format": "yolov8", "score_threshold": 0.5, "iou_threshold": 0.3,
                      "max_detections": 30},
        "pricing": {"per_call": "0.002", "trial_calls": 10, "export_price": "8.00"},
        "license": "BSD-3-Clause", "max_batch": 16,
        "examples": [page_png(digit_page(example_rng, images, targets)[0]) for _ in range(2)],
    }


# -- audio classification: phone keypad tones -------------------------------------------------
KEYPAD_RATE = 8000
KEYPAD_ROWS = (697, 770, 852, 941)  # Hz, ITU-T Q.23
KEYPAD_COLS = (1209, 1336, 1477, 1633)
KEYS = ("1", "2", "3", "A", "4", "5", "6", "B", "7", "8", "9", "C", "*", "0", "#", "D")
FRAME = 400  # 50 ms: 20 Hz bins, the rows 73 Hz or more apart
DETUNE = (-0.02, 0.0, 0.02)  # each tone probed at +-2 %: Q.24 lets a key be 1.5 % off


def keypad_tone(key: str, seconds: float = 0.3, rate: int = 16_000) -> np.ndarray:
    """The two tones of a keypad key, ``seconds`` long, then silence up to one second."""
    k = KEYS.index(key)
    t = np.arange(int(rate * seconds)) / rate
    clip = np.zeros(rate, np.float32)
    clip[:len(t)] = (0.4 * np.sin(2 * np.pi * KEYPAD_ROWS[k // 4] * t)
                     + 0.4 * np.sin(2 * np.pi * KEYPAD_COLS[k % 4] * t))
    return clip


@cache
def keypad_tones() -> Built:
    from serving.tasks.audio import wav_bytes

    samples = KEYPAD_RATE  # one second
    freqs = [f * (1 + d) for f in KEYPAD_ROWS + KEYPAD_COLS for d in DETUNE]
    n = np.arange(FRAME)
    phase = 2 * np.pi * np.outer(n, freqs) / KEYPAD_RATE
    window = np.hanning(FRAME)[:, None]
    basis = np.concatenate([window * np.cos(phase), window * np.sin(phase)], axis=1)
    # a tone's power over its probes per unit of the clip's energy: 1 for a pure tone
    tone = np.sin(2 * np.pi * KEYPAD_ROWS[0] * n / KEYPAD_RATE)
    power = (tone @ basis) ** 2
    norm = (power[:3].sum() + power[24:27].sum()) / (tone ** 2).sum()
    to_keys = np.zeros((8, len(KEYS) + 1), np.float32)
    for k in range(len(KEYS)):
        to_keys[k // 4, k] = to_keys[4 + k % 4, k] = 1
    # a key scores when both its tones hold a share of the energy; "none" wins otherwise
    bias = np.asarray([-10.0] * len(KEYS) + [4.5], np.float32)
    n_ = helper.make_node
    nodes = [
        n_("Reshape", ["waveform", "frames_shape"], ["frames"]),
        n_("MatMul", ["frames", "basis"], ["proj"]), n_("Mul", ["proj", "proj"], ["sq"]),
        n_("ReduceSum", ["sq", "ax1"], ["per_probe"], keepdims=0),
        n_("Reshape", ["per_probe", "probe_shape"], ["probes"]),
        n_("ReduceSum", ["probes", "ax13"], ["tones"], keepdims=0),
        n_("Mul", ["waveform", "waveform"], ["sq_in"]),
        n_("ReduceSum", ["sq_in", "ax1"], ["energy"], keepdims=1),
        n_("Mul", ["energy", "norm"], ["scaled_energy"]),
        n_("Add", ["scaled_energy", "eps"], ["den"]),
        n_("Div", ["tones", "den"], ["share"]), n_("Sqrt", ["share"], ["root"]),
        n_("MatMul", ["root", "to_keys"], ["pair"]), n_("Mul", ["pair", "gain"], ["g"]),
        n_("Add", ["g", "bias"], ["logits"]),
        n_("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    f = TensorProto.FLOAT
    data = _graph("keypad-tones", nodes,
                  [helper.make_tensor_value_info("waveform", f, ["N", samples])],
                  [helper.make_tensor_value_info("probabilities", f, ["N", len(KEYS) + 1])],
                  {"frames_shape": np.asarray([-1, samples // FRAME, FRAME], np.int64),
                   "basis": basis.astype(np.float32), "ax1": np.asarray([1], np.int64),
                   "probe_shape": np.asarray([-1, 2, 8, len(DETUNE)], np.int64),
                   "ax13": np.asarray([1, 3], np.int64), "norm": np.float32(norm),
                   "eps": np.float32(1e-6), "to_keys": to_keys, "gain": np.float32(14.0),
                   "bias": bias})
    return data, {
        "title": "Phone keypad tones",
        "description": "Tells which phone key (0-9, *, #, A-D) a tone dialled was, or none: "
                       "the DTMF frequencies of ITU-T Q.23 probed by a windowed DFT, assembled "
                       "at start. One key per clip of at most a second.",
        "category": "audio", "task": "audio-classification",
        "inputs": [{"name": "waveform", "dtype": "float32", "shape": [-1, samples]}],
        "outputs": [{"name": "probabilities", "dtype": "float32",
                     "shape": [-1, len(KEYS) + 1]}],
        "labels": [*KEYS, "none"],
        "audio": {"sample_rate": KEYPAD_RATE, "max_seconds": 1},
        "pricing": {"per_call": "0.0005", "trial_calls": 20, "export_price": "3.00"},
        "license": "MIT", "max_batch": 32,
        "examples": [base64.b64encode(wav_bytes(keypad_tone(k), 16_000)).decode()
                     for k in ("5", "#")],
    }
