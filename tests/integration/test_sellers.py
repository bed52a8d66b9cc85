"""Sellers' public handles and pages, on both stacks."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from storefront.db import alembic_config, make_engine
from tests.conftest import HAVE_PG
from tests.helpers import bearer, email, signup


def _token(client: Any, addr: str) -> str:
    r = client.post("/v1/auth/token", data={"username": addr, "password": "password-123"})
    return str(r.json()["access_token"])


def test_handles_are_chosen_or_derived_and_unique(client):
    chosen = f"acme-{uuid.uuid4().hex[:6]}"
    addr = email("seller")
    r = client.post("/v1/accounts", json={"email": addr, "password": "password-123",
                                          "role": "seller", "handle": chosen.upper()})
    assert r.status_code == 201, r.text
    assert client.get("/v1/account", headers=bearer(_token(client, addr))).json()[
        "handle"] == chosen
    r = client.post("/v1/accounts", json={"email": email("seller"), "password": "password-123",
                                          "role": "seller", "handle": chosen})
    assert r.status_code == 409 and r.json()["error"]["code"] == "handle_taken"
    for bad in ("ab", "-abc", "abc-", "a b c", "x" * 41, "admin", "sellers"):
        r = client.post("/v1/accounts", json={"email": email("seller"), "handle": bad,
                                              "password": "password-123", "role": "seller"})
        assert r.status_code == 422, bad

    name = f"Jo {uuid.uuid4().hex[:6]}"
    derived = []
    for _ in range(2):
        addr = email("seller")
        assert client.post("/v1/accounts", json={"email": addr, "password": "password-123",
                                                 "role": "seller", "name": name}
                           ).status_code == 201
        derived.append(client.get("/v1/account", headers=bearer(_token(client, addr))
                                  ).json()["handle"])
    base = name.lower().replace(" ", "-")
    assert derived == [base, f"{base}-2"]
    addr = email("buyer")  # no name: nothing of the e-mail in the public handle
    client.post("/v1/accounts", json={"email": addr, "password": "password-123",
                                      "role": "buyer"})
    handle = client.get("/v1/account", headers=bearer(_token(client, addr))).json()["handle"]
    assert re.fullmatch(r"member-[0-9a-f]{6}", handle) and addr.split("@")[0] not in handle


def test_the_seller_page_and_api(client):
    listing = client.get("/v1/models/handwritten-digits").json()
    handle = listing["seller_handle"]
    assert handle and listing["seller_url"] == f"/sellers/{handle}"
    card = client.get("/v1/models", params={"q": "digits"}).json()["items"][0]
    assert card["seller_handle"]
    profile = client.get(f"/v1/sellers/{handle}").json()
    assert set(profile) >= {"handle", "listings", "calls_served", "rating", "member_since"}
    assert "handwritten-digits" in [m["slug"] for m in profile["listings"]]
    assert profile["calls_served"] == sum(m["calls_served"] for m in profile["listings"])
    assert set(profile["rating"]) == {"average", "count"}
    r = client.get("/v1/sellers/nobody-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "seller_not_found"
    _, _ = signup(client, "buyer")  # buyers have handles but no seller page

    client.cookies.clear()
    page = client.get(f"/sellers/{handle}").text
    assert "Calls served" in page and "/models/handwritten-digits" in page
    assert "Member since" in page
    assert client.get("/sellers/nobody-here").status_code == 404
    assert f'href="/sellers/{handle}"' in client.get("/models/handwritten-digits").text


@pytest.mark.parametrize("dialect", ["sqlite"] + (["postgresql"] if HAVE_PG else []))
def test_migration_0013_backfills_unique_handles_and_goes_down_again(dialect, tmp_path):
    if dialect == "sqlite":
        url, drop = f"sqlite:///{tmp_path / 'm.db'}", None
    else:
        import psycopg

        drop = f"aimarket_mig_{uuid.uuid4().hex[:10]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{drop}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{drop}"
    engine = make_engine(url)
    try:
        cfg = alembic_config(engine)
        command.upgrade(cfg, "0012_edge_usage")
        with engine.begin() as conn:
            for i, (name, mail) in enumerate((("Ann Lee", "a@example.com"),
                                              ("ann lee", "b@example.com"),
                                              ("", "admin@example.com"),
                                              ("x", "zed.k@example.com")), start=1):
                conn.execute(text(
                    "INSERT INTO accounts (id, email, name, password_hash, role, created_at) "
                    f"VALUES ({i}, '{mail}', '{name}', 'x', 'seller', '2026-12-01 10:00:00')"))
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            handles = list(conn.execute(text("SELECT handle FROM accounts ORDER BY id"))
                           .scalars())
        assert handles[:2] == ["ann-lee", "ann-lee-2"]
        assert all(re.fullmatch(r"member-[0-9a-f]{6}", h) for h in handles[2:])  # no e-mail
        assert len(set(handles)) == 4
        command.downgrade(cfg, "0012_edge_usage")
        command.upgrade(cfg, "head")
    finally:
        engine.dispose()
        if drop:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
