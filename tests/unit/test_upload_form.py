"""The upload form is read once, for the API and the seller's page: one set of spellings."""

import asyncio
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from serving import BadRequest, InvalidInput, PayloadTooLarge
from storefront.publishing import ATTEST_YES, Submission, read_upload


def _request(data: dict[str, str], files: dict[str, Any], **headers: str) -> Request:
    built = httpx.Request("POST", "http://test/upload", data=data, files=files)
    body = built.read()
    sent = {k.lower(): v for k, v in built.headers.items()}
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/upload", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in sent.items()]}
    return Request(scope, receive)


def _read(data: dict[str, str], files: dict[str, Any] | None = None, **kw: Any) -> Submission:
    files = {"model": ("m.onnx", b"onnx-bytes")} if files is None else files
    return asyncio.run(read_upload(_request(data, files), 1, **kw))


@pytest.mark.parametrize("value", ["true", "True", "on", "1", "yes", "YES"])
def test_each_documented_spelling_attests(value: str) -> None:
    assert value.lower() in ATTEST_YES
    assert _read({"attest_rights": value}).attested


@pytest.mark.parametrize("value", ["", "false", "0", "no", "off"])
def test_anything_else_does_not_attest(value: str) -> None:
    assert not _read({"attest_rights": value}).attested


def test_fields_are_read_and_empty_ones_are_absent() -> None:
    sub = _read({"attest_rights": "on", "license": "MIT", "slug": " my-model ",
                 "manifest": "title: x"})
    assert sub == Submission(upload=b"onnx-bytes", manifest_text="title: x", license="MIT",
                             attested=True, slug="my-model")
    empty = _read({"license": "", "slug": ""},
                  files={"model": ("m.onnx", b"x"), "manifest": ("", b"")})
    assert (empty.manifest_text, empty.license, empty.slug, empty.attested) == (
        None, None, None, False)


def test_a_manifest_file_is_read() -> None:
    sub = _read({}, files={"model": ("m.onnx", b"x"), "manifest": ("m.yaml", b"title: y")})
    assert sub.manifest_text == b"title: y"


def test_refusals() -> None:
    with pytest.raises(InvalidInput) as exc:
        _read({}, files={"manifest": ("m.yaml", b"title: y")})
    assert exc.value.code == "missing_model"
    with pytest.raises(InvalidInput) as exc:
        _read({}, files={"model": ("m.onnx", b"x"), "slug": ("s", b"x")})
    assert exc.value.code == "invalid_field"
    with pytest.raises(PayloadTooLarge):
        _read({}, files={"model": ("m.onnx", b"x" * (1024 * 1024 + 1))})
    with pytest.raises(BadRequest) as exc:
        asyncio.run(read_upload(_request({"a": "b"}, {}), 1))
    assert exc.value.code == "multipart_required"


def test_the_check_sees_the_form_first() -> None:
    seen = []
    _read({"csrf": "token"}, check=lambda form: seen.append(form.get("csrf")))
    assert seen == ["token"]
