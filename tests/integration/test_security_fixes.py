"""Regression tests of the security findings, through the HTTP API on both stacks."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.helpers import admin_token, bearer, signup

HUGE = 2**64  # above any int64 column
SLUG = "handwritten-digits"


def error_of(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


def _quiet(settings, **update):  # type: ignore[no-untyped-def]
    """Another app on the same servers: no demo seeding, no flusher."""
    return settings.model_copy(update={"seed_demo": False, "run_flusher": False, **update})


# 1. The admin bootstrap never takes over an account it did not create.

def test_bootstrap_refuses_to_promote_an_existing_account(client, settings):
    from storefront.app import create_app

    addr, token = signup(client, "buyer")
    other = _quiet(settings, admin_email=addr, admin_password=SecretStr("bootstrap-pass-1"))
    with pytest.raises(RuntimeError, match="AIMARKET_ADMIN_EMAIL"), \
            TestClient(create_app(other)):
        pass
    assert client.get("/v1/account", headers=bearer(token)).json()["role"] == "buyer"
    r = client.post("/v1/auth/token", data={"username": addr, "password": "bootstrap-pass-1"})
    assert r.status_code == 401


def test_bootstrap_leaves_an_existing_admin_alone(client, settings):
    from storefront.app import create_app

    with TestClient(create_app(_quiet(settings, admin_password=SecretStr("other-pass-123")))):
        pass
    assert admin_token(client)  # the admin's own password still works


