import pytest

from serving import Unauthorized
from storefront.security import (
    hash_password,
    issue_token,
    new_api_key,
    read_token,
    split_api_key,
    verify_password,
)


def test_passwords_are_hashed_with_argon2_and_verify():
    h = hash_password("correct horse")
    assert h.startswith("$argon2") and "correct horse" not in h
    assert verify_password("correct horse", h)
    assert not verify_password("wrong", h)
    assert not verify_password("anything", None)


def test_api_key_is_shown_once_and_stored_as_hash():
    secret, prefix, digest = new_api_key()
    parsed = split_api_key(secret)
    assert parsed is not None and parsed[0] == prefix
    assert parsed[1] not in digest and len(digest) == 64


@pytest.mark.parametrize(
    "raw", ["", "amk", "amk_short_x", "sk_123456789012_x", "amk_123456789012_"]
)
def test_malformed_keys_are_rejected(raw):
    assert split_api_key(raw) is None


def test_tokens_round_trip_and_reject_tampering():
    t = issue_token(42, key="k" * 32, minutes=5)
    assert read_token(t, key="k" * 32) == 42
    with pytest.raises(Unauthorized):
        read_token(t, key="other" * 8)
    with pytest.raises(Unauthorized):
        read_token(t[:-2] + "xx", key="k" * 32)
    expired = issue_token(42, key="k" * 32, minutes=-1)
    with pytest.raises(Unauthorized, match="expired"):
        read_token(expired, key="k" * 32)


# Security findings: input parsing and settings (the HTTP side is in
# tests/integration/test_security_fixes.py).

def test_binary_header_length_is_ascii_digits_of_sane_length():
    from serving import InvalidInput, parse_v2_body

    for bad in ("²", "١", "9" * 5000, "", "+1", " 1", "1_0"):
        with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
            parse_v2_body(b'{"inputs": []}', bad)
    assert parse_v2_body(b'{"inputs": []}', "14") == {"inputs": []}


def _int_manifest(dtype: str):
    from serving import parse_manifest

    return parse_manifest(
        "title: T\ncategory: c\ntask: tensor\n"
        f"inputs: [{{name: x, dtype: {dtype}, shape: [-1, 2]}}]\n"
        "outputs: [{name: y, dtype: float32, shape: [-1]}]\npricing: {per_call: '0.001'}\n"
    )


@pytest.mark.parametrize("dtype,datatype,data,needle", [
    ("int8", "INT8", [1000, 1], "range"),
    ("int8", "INT8", [1000.0, 1], "range"),
    ("uint8", "UINT8", [-1, 1], "range"),
    ("int64", "INT64", [0.5, 1], "integ"),
    ("int64", "INT64", [2.0**63, 1], "range"),
    ("int64", "INT64", [2**64, 1], "integ"),
    ("int64", "INT64", ["1", 1], "integ"),
    ("int8", "INT64", [1000, 1], "range"),  # declared wider than the model's input
    ("bool", "BOOL", [2, 1], "range"),
])
def test_integer_inputs_refuse_what_a_cast_would_change(dtype, datatype, data, needle):
    import numpy as np

    from serving import InvalidInput, decode_v2_request

    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": data}]}
    with pytest.raises(InvalidInput, match=needle):
        decode_v2_request(body, _int_manifest(dtype))
    ok = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": [1.0, 0]}]}
    arrays, _ = decode_v2_request(ok, _int_manifest(dtype))
    assert arrays["x"].dtype == np.dtype(dtype) and arrays["x"].tolist() == [[1, 0]]


def test_money_fits_int64_micro_units():
    from metering import to_micro
    from serving import InvalidInput

    assert to_micro("9223372036854.775807") == 2**63 - 1
    assert to_micro("-9223372036854.775807") == -(2**63 - 1)
    for bad in ("9223372036854.775808", "10000000000000", "-10000000000000"):
        with pytest.raises(InvalidInput, match="too large"):
            to_micro(bad)


def test_a_short_secret_key_is_refused(monkeypatch, tmp_path):
    from pydantic import ValidationError

    from storefront.config import Settings

    with pytest.raises(ValidationError, match="AIMARKET_SECRET_KEY.*32"):
        Settings(data_dir=tmp_path, secret_key="x")
    monkeypatch.setenv("AIMARKET_SECRET_KEY", "k" * 31)
    with pytest.raises(ValidationError, match="AIMARKET_SECRET_KEY"):
        Settings(data_dir=tmp_path)
    monkeypatch.setenv("AIMARKET_SECRET_KEY", "k" * 32)
    assert Settings(data_dir=tmp_path).signing_key() == "k" * 32
    monkeypatch.delenv("AIMARKET_SECRET_KEY")
    assert len(Settings(data_dir=tmp_path).signing_key().encode()) >= 32  # generated


def test_rates_have_a_floor_everywhere():
    from pydantic import ValidationError

    from serving.manifest import RateLimit
    from storefront.config import Settings

    with pytest.raises(ValidationError):
        RateLimit(rps=1e-300, burst=1)
    with pytest.raises(ValidationError):
        Settings(rate_limit_rps=1e-300)
    assert RateLimit(rps=0.001, burst=1).rps == 0.001
