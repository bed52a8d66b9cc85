"""The README journey against a real `aimarket up` process on embedded defaults."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import DIGIT_ZERO, v2_body

BIN = Path(sys.executable).parent / "aimarket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 90) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"aimarket up exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling for readiness, not timing anything
    raise AssertionError("aimarket up did not become healthy")


@contextlib.contextmanager
def running(data: Path, port: int | None = None, admin_password: str = "change-me-now",
            extra_env: dict[str, str] | None = None):
    """`aimarket up` on embedded defaults in ``data``; stopped with SIGINT (must exit 0)."""
    port = port or _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMARKET_")}
    env.update(AIMARKET_DATA_DIR=str(data), AIMARKET_ADMIN_EMAIL="admin@example.com",
               AIMARKET_ADMIN_PASSWORD=admin_password, **(extra_env or {}))
    data.mkdir(parents=True, exist_ok=True)
    log = (data / "server.log").open("ab")
    proc = subprocess.Popen([str(BIN), "up", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (data / "server.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e")
    with running(data) as (url, env):
        yield url, data, env


def _until(fn, deadline_s: float = 15):
    """Poll until ``fn()`` is truthy (the ledger flush is asynchronous)."""
    end = time.monotonic() + deadline_s
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


def test_readme_journey_over_http(server, tmp_path):
    url, data, env = server
    c = httpx.Client(base_url=url, timeout=30)
    catalog = c.get("/v1/models").json()
    assert {"handwritten-digits", "iris-species", "wine-cultivar", "diabetes-progression"} <= {
        i["slug"] for i in catalog["items"]}

    for who, role in (("seller@example.com", "seller"), ("buyer@example.com", "buyer")):
        r = c.post("/v1/accounts", json={"email": who, "password": "secret-pass", "role": role})
        assert r.status_code == 201, r.text

    def token(user: str, pw: str) -> str:
        return c.post("/v1/auth/token", data={"username": user, "password": pw}
                      ).json()["access_token"]

    seller = token("seller@example.com", "secret-pass")
    buyer = token("buyer@example.com", "secret-pass")
    admin = token("admin@example.com", "change-me-now")

    # the seller publishes with the CLI
    from storefront.demo import digits

    model_bytes, manifest = digits()
    manifest.update(title="My digits", pricing={"per_call": "0.002", "trial_calls": 5})
    (tmp_path / "digits.onnx").write_bytes(model_bytes)
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(manifest))
    out = subprocess.run(
        [str(BIN), "publish", str(tmp_path / "digits.onnx"), "--manifest",
         str(tmp_path / "digits.yaml"), "--url", url, "--attest", "--license", "MIT",
         "--email", "seller@example.com",
         "--password", "secret-pass"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"status": "pending_review"' in out.stdout and '"slug": "my-digits"' in out.stdout
    bad = subprocess.run(
        [str(BIN), "publish", str(tmp_path / "digits.yaml"), "--manifest",
         str(tmp_path / "digits.yaml"), "--url", url, "--token", seller],
        env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "error (422)" in bad.stderr and "Traceback" not in bad.stderr

    auth = {"Authorization": f"Bearer {admin}"}
    assert c.post("/v1/admin/models/my-digits/approve", headers=auth).status_code == 200
    key = c.post("/v1/keys", headers={"Authorization": f"Bearer {buyer}"}).json()["key"]
    kh = {"Authorization": f"Bearer {key}"}
    for i in range(5):
        r = c.post("/v2/models/my-digits/infer", json=v2_body([DIGIT_ZERO]), headers=kh)
        assert r.status_code == 200 and r.headers["x-trial-remaining"] == str(4 - i)
    r = c.post("/v2/models/my-digits/infer", json=v2_body(), headers=kh)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    r = c.post("/v1/admin/credits", headers=auth,
               json={"account_email": "buyer@example.com", "amount": "1.00"})
    assert r.status_code == 201
    r = c.post("/v2/models/my-digits/infer", json=v2_body(), headers=kh)
    assert r.status_code == 200
    assert (r.headers["x-cost"], r.headers["x-credits-remaining"]) == ("0.002", "0.998")

    def usage():
        u = c.get("/v1/usage", headers={"Authorization": f"Bearer {buyer}"}).json()
        return u if u["total"]["calls"] == 6 else None

    u = _until(usage)
    assert u and u["total"]["paid_calls"] == 1 and u["total"]["spend"] == "0.002"
    earn = c.get("/v1/seller/earnings", headers={"Authorization": f"Bearer {seller}"}).json()
    assert earn["total"]["seller_share"] == "0.0016" and earn["total"]["platform_fee"] == "0.0004"
    assert 'aimarket_calls_total{kind="paid",listing="my-digits"} 1.0' in c.get("/metrics").text


def test_restart_keeps_counters_credits_and_catalog(tmp_path):
    """Trial counters and credits live in the persistent embedded Redis and the SQLite ledger;
    a second start re-seeds nothing and the buyer continues where they were."""

    def login(c: httpx.Client, user: str, pw: str) -> dict[str, str]:
        tok = c.post("/v1/auth/token", data={"username": user, "password": pw}).json()
        return {"Authorization": f"Bearer {tok['access_token']}"}

    with running(tmp_path) as (url, _):
        c = httpx.Client(base_url=url, timeout=30)
        c.post("/v1/accounts", json={"email": "b@example.com", "password": "secret-pass",
                                     "role": "buyer"})
        key = c.post("/v1/keys", headers=login(c, "b@example.com", "secret-pass")).json()["key"]
        kh = {"Authorization": f"Bearer {key}"}
        for _ in range(2):
            assert c.post("/v2/models/handwritten-digits/infer", json=v2_body(),
                          headers=kh).status_code == 200
        c.post("/v1/admin/credits", headers=login(c, "admin@example.com", "change-me-now"),
               json={"account_email": "b@example.com", "amount": "0.50"})
        first = c.get("/v1/models", params={"page_size": 100}).json()["total"]
    with running(tmp_path) as (url, _):
        c = httpx.Client(base_url=url, timeout=30)
        r = c.post("/v2/models/handwritten-digits/infer", json=v2_body(), headers=kh)
        assert r.status_code == 200 and r.headers["x-trial-remaining"] == "2"
        assert r.headers["x-credits-remaining"] == "0.50"
        assert c.get("/v1/models", params={"page_size": 100}).json()["total"] == first
        u = c.get("/v1/usage", headers=login(c, "b@example.com", "secret-pass")).json()
        assert u["total"]["calls"] >= 2  # flushed at the first stop, at the latest


def test_cli_help_lists_the_verbs():
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for verb in ("up", "publish", "example", "export", "verify", "ledger", "billing"):
        assert verb in out.stdout
    sub = subprocess.run([str(BIN), "billing", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert "sync" in sub.stdout and "payouts" in sub.stdout


def test_cli_export_and_verify(server, tmp_path):
    url, data, env = server
    c = httpx.Client(base_url=url, timeout=30)
    c.post("/v1/accounts", json={"email": "exporter@example.com", "password": "secret-pass",
                                 "role": "buyer"})
    admin = c.post("/v1/auth/token", data={"username": "admin@example.com",
                                           "password": "change-me-now"}).json()["access_token"]
    c.post("/v1/admin/credits", headers={"Authorization": f"Bearer {admin}"},
           json={"account_email": "exporter@example.com", "amount": "10.00"})
    who = ["--url", url, "--email", "exporter@example.com", "--password", "secret-pass"]
    out = subprocess.run([str(BIN), "export", "iris-species", "--target", "nano-kit", "-o",
                          str(tmp_path / "b.zip"), *who], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "no_license" in out.stderr  # not bought yet
    tok = c.post("/v1/auth/token", data={"username": "exporter@example.com",
                                         "password": "secret-pass"}).json()["access_token"]
    assert c.post("/v1/models/iris-species/purchase",
                  headers={"Authorization": f"Bearer {tok}"}).status_code == 201
    out = subprocess.run([str(BIN), "export", "iris-species", "--target", "nano-kit", "-o",
                          str(tmp_path / "b.zip"), *who], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ok = subprocess.run([str(BIN), "verify", str(tmp_path / "b.zip"), "--url", url], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "licensed to exporter@example.com" in ok.stdout
    raw = bytearray((tmp_path / "b.zip").read_bytes())
    raw[-200] ^= 0x01  # one flipped byte in the archive's tail
    (tmp_path / "t.zip").write_bytes(bytes(raw))
    bad = subprocess.run([str(BIN), "verify", str(tmp_path / "t.zip"), "--url", url], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
