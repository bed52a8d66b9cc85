"""The v2 binary tensor extension (tritonclient's default): JSON header, then raw bytes."""

import json

import numpy as np
import pytest

from serving import InvalidInput, decode_v2_request, parse_manifest, parse_v2_body
from tests.unit.test_manifest import DIGITS_YAML

M = parse_manifest(DIGITS_YAML)


def binary(arr: np.ndarray, size: int | None = None, extra: bytes = b"") -> tuple[bytes, str]:
    raw = arr.tobytes()
    header = json.dumps({"inputs": [{
        "name": "X", "shape": list(arr.shape), "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw) if size is None else size}}]}).encode()
    return header + raw + extra, str(len(header))


def test_binary_inputs_decode_like_json_ones() -> None:
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    body, length = binary(x)
    arrays, wanted = decode_v2_request(parse_v2_body(body, length), M)
    np.testing.assert_array_equal(arrays["X"], x)
    assert wanted == ["label", "probabilities"]


@pytest.mark.parametrize("case", ["too_long_header", "size_past_end", "odd_size", "trailing",
                                  "not_a_number"])
def test_malformed_binary_bodies_are_422(case: str) -> None:
    x = np.zeros((1, 64), np.float32)
    body, length = binary(x)
    if case == "too_long_header":
        length = str(len(body) + 1)
    elif case == "size_past_end":
        body, length = binary(x, size=10_000)
    elif case == "odd_size":
        body, length = binary(x, size=255, extra=b"")
    elif case == "trailing":
        body, length = binary(x, extra=b"xx")
    else:
        length = "12a"
    with pytest.raises(InvalidInput):
        decode_v2_request(parse_v2_body(body, length), M)


def test_plain_json_still_parses_and_bad_json_is_invalid_json() -> None:
    assert parse_v2_body(b'{"inputs": []}', None) == {"inputs": []}
    with pytest.raises(InvalidInput) as err:
        parse_v2_body(b"{nope", None)
    assert err.value.code == "invalid_json"
