import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving import (
    InvalidInput,
    decode_v2_request,
    encode_v2_response,
    load_image,
    parse_manifest,
    prepare,
)
from serving.tasks import postprocess
from tests.unit.test_manifest import DIGITS_YAML

M = parse_manifest(DIGITS_YAML)


def body(**over):
    item = {"name": "X", "shape": [2, 64], "datatype": "FP32", "data": list(range(128))}
    item.update(over)
    return {"inputs": [item]}


def test_v2_request_decodes_to_the_declared_dtype_and_shape():
    arrays, wanted = decode_v2_request(body(), M)
    assert arrays["X"].shape == (2, 64) and arrays["X"].dtype == np.float32
    assert wanted == ["label", "probabilities"]


@pytest.mark.parametrize("b,needle", [
    ({}, "inputs"), (body(name="Y"), "unknown input"), (body(datatype="STRING"), "datatype"),
    (body(shape=[3, 64]), "does not fit"), (body(shape=[2, 32, 2]), "dimensions"),
    (body(shape=[4, 32], data=list(range(128))), "dimension 1"), (body(data="abc"), "does not fit"),
    (body(shape=[0, 64], data=[]), "empty"), ({"inputs": [{"name": "X"}]}, "datatype"),
    (body(data=[float("nan")] * 128), "NaN"), (body(datatype="INT64", shape=[-1, 64]), "shape"),
])
def test_bad_v2_requests_are_invalid_input(b, needle):
    with pytest.raises(InvalidInput, match=needle):
        decode_v2_request(b, M)


def test_batch_limit():
    rows = 65
    with pytest.raises(InvalidInput, match="max_batch"):
        decode_v2_request(body(shape=[rows, 64], data=[0.0] * 64 * rows), M)


def test_v2_response_shape():
    out = encode_v2_response("m", "1", "rid", {"label": np.array([3]),
                                               "probabilities": np.zeros((1, 10), np.float32)},
                             ["label"])
    assert out["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}]


def _png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_image_task_preprocessing_resizes_and_scales():
    img = np.full((32, 32), 255, dtype=np.uint8)
    feeds = prepare(M, {"image": _png(img)})
    assert feeds["X"].shape == (1, 64)
    assert np.allclose(feeds["X"], 255 * 0.0625)


@pytest.mark.parametrize("payload,needle", [
    ({}, "image"), ({"image": "!!!"}, "base64"), ({"image": base64.b64encode(b"xx").decode()},
                                                  "decoded"), ({"images": []}, "image"),
])
def test_bad_images_are_invalid_input(payload, needle):
    with pytest.raises(InvalidInput, match=needle):
        prepare(M, payload)


def _png_header(width: int, height: int) -> str:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
           + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode()


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(50_000, 50_000), (7000, 7000), (9000, 9000)])
def test_images_with_too_many_pixels_are_invalid_input(size):
    """Over the site's limit, under or over Pillow's (whose warning may be an error)."""
    with pytest.raises(InvalidInput, match="too many pixels"):
        prepare(M, {"image": _png_header(*size)})
    with pytest.raises(InvalidInput, match="too many pixels"):
        load_image(_png_header(*size))


def test_classification_postprocess_gives_labels_and_top_scores():
    probs = np.array([[0.1, 0.7, 0.2] + [0.0] * 7], dtype=np.float32)
    out = postprocess(M, {"label": np.array([1]), "probabilities": probs})
    pred = out["predictions"][0]
    assert pred["label"] == "1" and pred["top"][0] == {"label": "1", "score": pytest.approx(0.7)}
    assert [t["label"] for t in pred["top"]] == ["1", "2", "0"]
