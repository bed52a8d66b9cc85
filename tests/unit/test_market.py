"""The market's pure parts: handles, sunset dates and headers, a listing's OpenAPI schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import jsonschema
import pytest

from serving import Manifest
from storefront import handles, lifecycle, listing_openapi


@pytest.mark.parametrize(("name", "email", "expected"), [
    ("Ann Lee", "a@example.com", "ann-lee"),
    ("  Ünïcode & Co!  ", "x@example.com", "n-code-co"),
    ("jo.smith", "jo.smith@example.com", None),  # the e-mail's local part: never public
    ("", "someone@example.com", None),
    ("ab", "z@example.com", None),  # too short
    ("Admin", "q@example.com", None),  # reserved
])
def test_handle_bases_never_reveal_the_email(name, email, expected):
    base = handles.handle_base(name, email)
    if expected is None:
        assert re.fullmatch(r"member-[0-9a-f]{6}", base)
    else:
        assert base == expected
    assert handles.is_valid(base)


@pytest.mark.parametrize(("handle", "ok"), [("abc", True), ("a-b-c", True), ("x" * 40, True),
                                            ("ab", False), ("-abc", False), ("abc-", False),
                                            ("a_bc", False), ("ABC", False), ("x" * 41, False),
                                            ("sellers", False)])
def test_handle_rules(handle, ok):
    assert handles.is_valid(handle) is ok


def test_sunsets_parse_as_utc():
    assert lifecycle.parse_when("2027-01-31") == datetime(2027, 1, 31, tzinfo=UTC)
    assert lifecycle.parse_when("2027-01-31T12:00:00+02:00") == datetime(
        2027, 1, 31, 10, tzinfo=UTC)
    assert lifecycle.parse_when("2027-01-31T12:00:00") == datetime(2027, 1, 31, 12, tzinfo=UTC)
    for bad in ("tomorrow", "2027-02-30", "31/01/2027"):
        with pytest.raises(ValueError):
            lifecycle.parse_when(bad)


def test_deprecation_headers_follow_the_rfcs():
    assert lifecycle.headers("m", None, None) == ()
    deprecated = datetime(2026, 12, 1, 8, tzinfo=timezone(timedelta(hours=1)))
    sunset = datetime(2027, 1, 31)  # naive, as SQLite returns it: UTC
    h = dict(lifecycle.headers("m", deprecated, sunset))
    assert h[b"deprecation"] == f"@{int(deprecated.timestamp())}".encode()  # RFC 9745
    assert parsedate_to_datetime(h[b"sunset"].decode()) == sunset.replace(tzinfo=UTC)
    assert h[b"sunset"].endswith(b"GMT")  # RFC 8594: an HTTP-date
    assert b'rel="deprecation"' in h[b"link"]
    err = lifecycle.sunset_error("m", 2, sunset)
    assert (err.status, err.code, err.details["version"]) == (410, "version_sunset", 2)


@pytest.fixture(scope="module")
def digits_manifest() -> Manifest:
    from storefront.demo import digits

    return Manifest.model_validate(digits()[1])


def test_the_openapi_schemas_are_json_schemas(digits_manifest):
    doc = listing_openapi.document("http://h", "d", 3, digits_manifest)
    assert doc["info"]["version"] == "3"
    for name, schema in doc["components"]["schemas"].items():
        assert name and jsonschema.Draft202012Validator.check_schema(schema) is None
    request = jsonschema.Draft202012Validator(doc["components"]["schemas"]["PredictRequest"])
    assert request.is_valid({"image": "aGk="}) and request.is_valid({"images": ["aGk="]})
    assert not request.is_valid({"images": []}) and not request.is_valid({})
    assert not request.is_valid({"images": ["a"] * (digits_manifest.max_batch + 1)})


def test_tensor_and_tabular_requests_follow_the_manifest(digits_manifest):
    tensor = digits_manifest.model_copy(update={"task": "tensor"})
    schema = listing_openapi.request_schema(tensor)
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid({"inputs": {"X": [[0.0] * 64]}})
    assert not check.is_valid({"inputs": {"X": [[0.0] * 63]}})
    assert not check.is_valid({"inputs": {}})
    from storefront.demo import iris

    table = Manifest.model_validate(iris()[1])
    check = jsonschema.Draft202012Validator(listing_openapi.request_schema(table))
    assert check.is_valid({"rows": [[1, 2, 3, 4], {"sepal_length": 1, "sepal_width": 2,
                                                   "petal_length": 3, "petal_width": 4}]})
    assert not check.is_valid({"rows": [[1, 2, 3]]})
    assert not check.is_valid({"rows": [{"sepal_length": 1}]})
