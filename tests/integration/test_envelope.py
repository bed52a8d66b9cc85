"""One JSON error envelope on every door: the API, the pure-ASGI paid call, unknown paths,
wrong methods, an unexpected 500, the demo mount and the exported bundle's runner."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import zipfile

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from storefront import errors
from tests.helpers import bearer, grant, signup

pytestmark = pytest.mark.integration


def assert_envelope(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/models/no-such-model", 404, "model_not_found"),  # ours, 4xx
    ("POST", "/v2/models/no-such-model/infer", 401, "missing_key"),  # the fast path's door
    ("GET", "/no/such/path", 404, "not_found"),  # the framework's unknown path
    ("DELETE", "/v1/models", 405, "method_not_allowed"),
    ("POST", "/v1/accounts", 422, "invalid_input"),  # body validation
    ("GET", "/try/no-such-model/", 404, "model_not_found"),  # the Gradio mount
])
def test_the_envelope_of_every_door(client, method, path, status, code):
    assert_envelope(client.request(method, path), status, code)


def test_an_unexpected_error_is_a_500_envelope_without_details():
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail of the failure")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert_envelope(r, 500, "internal_error")
    assert "secret detail" not in r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_bundle_runner_answers_in_the_same_envelope(client, tmp_path):
    addr, token = signup(client, "buyer")
    grant(client, addr, "20.00")
    assert client.post("/v1/models/iris-species/purchase", headers=bearer(token)).status_code == 201
    made = client.post("/v1/exports", headers=bearer(token),
                       json={"slug": "iris-species", "target": "nano-kit"})
    assert made.status_code == 201, made.text
    data = client.get(made.json()["download"], headers=bearer(token)).content
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "run.py", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):  # wait for the port, not for a time
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        ok = httpx.post(f"{url}/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"]
        assert_envelope(httpx.post(f"{url}/nope", json={}), 404, "not_found")
        assert_envelope(httpx.post(f"{url}/predict", content=b"{not json"), 422,
                        "invalid_input")
        assert json.loads(httpx.post(f"{url}/predict", json={"rows": "x"}).text)["error"]
    finally:
        proc.terminate()
        proc.wait(10)
