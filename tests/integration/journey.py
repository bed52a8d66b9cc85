"""HTTP helpers of the backend tests (Ray, Triton) against a live app: sign up, publish, approve,
buy credits."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ADMIN = ("admin@test.local", "admin-pass-123")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(fn: Any, deadline_s: float = 60, what: str = "condition") -> Any:
    """Poll ``fn`` until truthy; not a timing test."""
    end = time.monotonic() + deadline_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def login(http: httpx.Client, addr: str, password: str = "password-123") -> dict[str, str]:
    r = http.post("/v1/auth/token", data={"username": addr, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def signup(http: httpx.Client, role: str) -> tuple[str, dict[str, str]]:
    addr = f"{role}-{time.monotonic_ns()}@example.com"
    r = http.post("/v1/accounts", json={"email": addr, "password": "password-123", "role": role})
    assert r.status_code == 201, r.text
    return addr, login(http, addr)


def admin(http: httpx.Client) -> dict[str, str]:
    return login(http, *ADMIN)


def publish(http: httpx.Client, seller: dict[str, str], model: bytes, manifest: dict,
            slug: str | None = None) -> dict[str, Any]:
    data = {"attest_rights": "true", "manifest": json.dumps(manifest), "license": "MIT"}
    if slug:
        data["slug"] = slug
    r = http.post("/v1/models", headers=seller, data=data,
                  files={"model": ("m.onnx", model, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return dict(r.json())


def approve(http: httpx.Client, slug: str, version: int) -> None:
    r = http.post(f"/v1/admin/models/{slug}/approve", headers=admin(http),
                  json={"version": version, "reason": "ok"})
    assert r.status_code == 200, r.text


def buyer(http: httpx.Client, credits: str | None = "1.00") -> tuple[dict[str, str], str]:
    addr, session = signup(http, "buyer")
    r = http.post("/v1/keys", headers=session, json={"name": "k"})
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    if credits:
        r = http.post("/v1/admin/credits", headers=admin(http),
                      json={"account_email": addr, "amount": credits})
        assert r.status_code == 201, r.text
    return key, addr


def credits(http: httpx.Client, addr: str) -> Decimal:
    me = http.get("/v1/account", headers=login(http, addr))
    return Decimal(str(me.json()["credits"]))


@contextlib.contextmanager
def live_app(data: Path, redis_url: str, what: str, **settings: Any) -> Iterator[tuple[str, Any]]:
    """The real app on uvicorn on a free loopback port, its state in ``data``: (URL, app)."""
    import uvicorn

    from storefront.app import create_app
    from storefront.config import Settings
    from tests.conftest import LOOSE_THROTTLES

    app = create_app(Settings(
        data_dir=data, database_url=f"sqlite:///{data / 'db.sqlite'}", redis_url=redis_url,
        admin_email=ADMIN[0], admin_password=ADMIN[1], seed_demo=False, flusher_process=False,
        flush_interval_ms=50, smoke_cpu_s=5, **{**LOOSE_THROTTLES, **settings},
    ))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    until(lambda: srv.started, 120, what)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(60)
