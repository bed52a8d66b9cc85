"""Property tests (issue 16): the parsers of untrusted input never raise anything but the
project's own 4xx errors.

- ``serving.parse_manifest`` on arbitrary text, YAML-ish text and structured manifests;
- ``serving.decode_v2_request`` on arbitrary JSON bodies (and near-valid ones);
- ``serving.parse_v2_body`` on binary bodies with ``Inference-Header-Content-Length``;
- ``metering.to_micro`` on arbitrary strings, decimals and ints: a 4xx, or the exact value.

Derandomized with bounded examples, so CI sees the same inputs in a few seconds.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import to_micro
from serving import AimarketError, Manifest, decode_v2_request, parse_manifest, parse_v2_body

PROPS = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                 suppress_health_check=list(HealthCheck))

MANIFEST = {
    "title": "t", "category": "c", "task": "tensor",
    "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 4]},
               {"name": "N", "dtype": "int8", "shape": [-1]}],
    "outputs": [{"name": "Y", "dtype": "float32", "shape": [-1]}],
    "pricing": {"per_call": "0.01"}, "max_batch": 8,
}
MODEL = Manifest.model_validate(MANIFEST)
DATATYPES = ["BOOL", "UINT8", "UINT16", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "fp32", ""]


def four_xx(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, allowing only the project's 4xx errors; returns the result or None."""
    try:
        return fn(*args)
    except AimarketError as exc:
        assert 400 <= exc.status < 500, exc
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=6),
    max_leaves=30)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | \
    st.text(max_size=8)


# -- manifests ---------------------------------------------------------------------------------
yamlish = st.lists(st.sampled_from([
    "title: ", "task: tensor", "\n", ": ", "- ", "[", "]", "{", "}", ",", "!!int ", "!!float ",
    "!!timestamp ", "!!binary ", "!!python/name:os.system", "&a ", "*a", "2001-13-01",
    "2001-02-30 10:00", "1e999", "0x", "0o9", "'", '"', "\\", "%YAML 1.1\n", "---\n", "...",
    "? ", "|\n ", ">\n ", "\t", "\x00", "\ufeff", "é", "1_0", "~", ".nan", "-.inf", "yes",
]), max_size=30).map("".join)


@PROPS
@given(st.text(max_size=200) | yamlish | st.binary(max_size=200))
def test_parse_manifest_any_text(text: str | bytes) -> None:
    four_xx(parse_manifest, text)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from([*MANIFEST, "labels", "preprocessing", "feature_names", "examples",
                            "rate_limit", "license", "description", "extra"])
    return st.dictionaries(keys, json_values | scalars, max_size=4).map(
        lambda change: {**MANIFEST, **change})


@PROPS
@given(_mutations())
def test_parse_manifest_near_valid_documents(doc: dict[str, Any]) -> None:
    for text in (json.dumps(doc, allow_nan=True), yaml.safe_dump(doc)):
        manifest = four_xx(parse_manifest, text)
        if manifest is not None:  # what is accepted can be stored (as JSON) and read back
            assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_parse_manifest_regressions() -> None:
    """What the properties found: each was a 500 on upload before."""
    for text in ("a: 2001-13-01", "{title: 2001-02-30}", "a: !!timestamp x", "a: !!int x",
                 "a: !!float x", "a: !!int", "[" * 10_000, "examples: &x [*x]", "a: &x [*x]",
                 json.dumps({**MANIFEST, "title": "\ud800"})):
        with pytest.raises(AimarketError) as err:
            parse_manifest(text)
        assert err.value.status == 422 and err.value.code == "invalid_manifest"


# -- v2 requests -------------------------------------------------------------------------------
def _tensor() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "name": st.sampled_from(["X", "N", "Z"]) | scalars,
        "shape": st.lists(st.integers(-2, 2**40) | scalars, max_size=4)
        | st.sampled_from([[1, 4], [2, 4], [1], [3], [9, 4]]),
        "datatype": st.sampled_from(DATATYPES) | scalars,
        "data": st.lists(st.integers(-300, 300) | st.floats() | st.integers() | scalars,
                         max_size=12) | json_values,
    })


v2_bodies = json_values | st.fixed_dictionaries(
    {"inputs": st.lists(_tensor(), max_size=3)},
    optional={"outputs": json_values | st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["Y", "Q"]) | scalars}), max_size=2)})


@PROPS
@given(v2_bodies)
def test_decode_v2_request_json(body: Any) -> None:
    decoded = four_xx(decode_v2_request, body, MODEL)
    if decoded is not None:
        arrays, _ = decoded
        assert set(arrays) == {"X", "N"}
        assert arrays["X"].dtype == np.float32 and arrays["N"].dtype == np.int8


@PROPS
@given(st.binary(max_size=300) | v2_bodies.map(lambda b: orjson.dumps(b, option=orjson.
                                                                     OPT_SERIALIZE_NUMPY)
                                                if _dumpable(b) else b"{}"))
def test_parse_v2_body_json_only(raw: bytes) -> None:
    body = four_xx(parse_v2_body, raw, None)
    if body is not None:
        four_xx(decode_v2_request, body, MODEL)


def _dumpable(body: Any) -> bool:
    try:
        orjson.dumps(body)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """A JSON header whose inputs declare binary_data_size, the raw tensor bytes after it, and
    an Inference-Header-Content-Length that may or may not be right."""
    inputs, blobs = [], []
    for _ in range(draw(st.integers(0, 3))):
        size = draw(st.integers(-2, 40) | scalars)
        item: dict[str, Any] = {"name": draw(st.sampled_from(["X", "N", "Z"])),
                                "shape": draw(st.sampled_from([[1, 4], [2, 4], [1], [4], []])),
                                "datatype": draw(st.sampled_from(DATATYPES)),
                                "parameters": {"binary_data_size": size}}
        inputs.append(item)
        blobs.append(draw(st.binary(max_size=40)))
    header = orjson.dumps({"inputs": inputs}) if _dumpable(inputs) else b"{}"
    raw = header + b"".join(blobs) + draw(st.binary(max_size=4))
    length = draw(st.sampled_from([str(len(header)), str(len(header) + 1), str(len(raw)),
                                   "0", "-1", " 5", "1e3", "٣", "9" * 40, ""])
                  | st.text(max_size=6))
    return raw, length


@PROPS
@given(binary_requests())
def test_parse_v2_body_binary(request: tuple[bytes, str]) -> None:
    raw, length = request
    body = four_xx(parse_v2_body, raw, length)
    if body is not None:
        four_xx(decode_v2_request, body, MODEL)


# -- money -------------------------------------------------------------------------------------
amount_text = st.text(max_size=40) | st.from_regex(
    r"\A[ +-]?[0-9_]{0,20}(\.[0-9]{0,40})?([eE][+-]?[0-9]{1,12})?\s?\Z") | st.sampled_from([
        "NaN", "sNaN", "-Infinity", "1e999999999", "1e-999999999", "9223372036854.775807",
        "9223372036854.775808", "-9223372036854.775808", "1.00000000000000000000000000001"])


@PROPS
@given(amount_text | st.decimals(allow_nan=True, allow_infinity=True)
       | st.integers(-(10**5000), 10**5000) | st.integers())
def test_to_micro_exact_or_4xx(amount: str | Decimal | int) -> None:
    micro = four_xx(to_micro, amount)
    if micro is not None:
        assert isinstance(micro, int) and abs(micro) <= 2**63 - 1
        exact = Decimal(amount) if isinstance(amount, int) else Decimal(str(amount).strip())
        assert Decimal(micro) == exact.scaleb(6) or exact * 1_000_000 == micro


def test_to_micro_regressions() -> None:
    """What the properties found: Decimal's 28-digit context rounded a sub-micro amount
    into an accepted one, an underflow became 0, a huge int raised ValueError (a 500)."""
    for amount in ("1.00000000000000000000000000001", "1e-1000000000", 10**5000):
        with pytest.raises(AimarketError) as err:
            to_micro(amount)
        assert err.value.status == 422 and err.value.code == "invalid_amount"
    assert to_micro("1.000000000000000000000000000000") == 1_000_000
    assert to_micro(7) == 7_000_000 and to_micro("0E-100") == 0
