"""Small helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
              0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
              0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


def v2_body(rows: list[list[float]] | None = None) -> dict[str, Any]:
    rows = rows or [DIGIT_ZERO]
    return {"inputs": [{"name": "X", "shape": [len(rows), 64], "datatype": "FP32",
                        "data": np.asarray(rows, dtype=float).ravel().tolist()}]}


def email(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:10]}@example.com"


def signup(client: Any, role: str, password: str = "password-123") -> tuple[str, str]:
    """(e-mail, access token) of a new account."""
    addr = email(role)
    r = client.post("/v1/accounts", json={"email": addr, "password": password, "role": role})
    assert r.status_code == 201, r.text
    r = client.post("/v1/auth/token", data={"username": addr, "password": password})
    assert r.status_code == 200, r.text
    return addr, r.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token(client: Any) -> str:
    r = client.post("/v1/auth/token",
                    data={"username": "admin@test.local", "password": "admin-pass-123"})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def new_key(client: Any, token: str) -> str:
    r = client.post("/v1/keys", headers=bearer(token), json={"name": "test"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def grant(client: Any, addr: str, amount: str) -> dict[str, Any]:
    r = client.post("/v1/admin/credits", headers=bearer(admin_token(client)),
                    json={"account_email": addr, "amount": amount})
    assert r.status_code == 201, r.text
    return r.json()


def fresh_address() -> str:
    """A client address no other test uses: one of the 131,072 of 198.18.0.0/15 (throttle
    and demo-quota buckets are per address and outlive a test on the shared Redis)."""
    r = uuid.uuid4().int
    return f"198.{18 + r % 2}.{(r >> 1) % 256}.{(r >> 9) % 254 + 1}"
