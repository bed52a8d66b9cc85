"""Shared fixtures: the real servers tests run against.

Every integration test runs on SQLite + the embedded Valkey server, and also on PostgreSQL +
the system Redis when those answer at 127.0.0.1 (they do on CI).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"
SYSTEM_REDIS = "redis://127.0.0.1:6379/0"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _postgres_ok() -> bool:
    if not _reachable(5432):
        return False
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", connect_timeout=2):
            return True
    except Exception:
        return False


TIERS = ("unit", "integration", "e2e", "browser")  # tests/<tier>/ carries the tier's marker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier (the folder under tests/), so ``-m`` picks a tier."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


HAVE_PG = _postgres_ok()
# One test client signs up and logs in hundreds of accounts from one address: the apps the
# tests start loosen the throttles (tests/integration/test_hardening.py tightens them again).
LOOSE_THROTTLES = {"signup_burst": 100_000, "login_address_failures_burst": 100_000,
                   "demo_burst": 100_000}
HAVE_REDIS = _reachable(6379)
STACKS = ["embedded"] + (["system"] if HAVE_PG and HAVE_REDIS else [])


@pytest.fixture(scope="session")
def embedded_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from storefront.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import psycopg

    name = f"aimarket_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield PG_URL + name
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=STACKS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, str]]:
    """(database URL, Redis URL, namespace) of one real server stack."""
    if request.param == "embedded":
        db = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
        yield {"name": "embedded", "db": db,
               "redis": request.getfixturevalue("embedded_redis_url"),
               "ns": f"t{uuid.uuid4().hex[:8]}:"}
    else:
        ns = f"t{uuid.uuid4().hex[:8]}:"
        yield {"name": "system", "db": request.getfixturevalue("pg_database"),
               "redis": SYSTEM_REDIS, "ns": ns}
        import redis

        r = redis.Redis.from_url(SYSTEM_REDIS)
        for key in r.scan_iter(f"{ns}*"):
            r.delete(key)


@pytest.fixture(scope="session")
def settings(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from storefront.config import Settings

    data_dir: Path = tmp_path_factory.mktemp(f"data-{stack['name']}")
    return Settings(
        data_dir=data_dir, database_url=stack["db"], redis_url=stack["redis"],
        redis_namespace=stack["ns"], admin_email="admin@test.local",
        admin_password="admin-pass-123", key_cache_seconds=5.0, flush_interval_ms=50,
        smoke_cpu_s=3, alerts_interval_s=0,  # tests drive the alert rounds themselves
        **LOOSE_THROTTLES,
    )


@pytest.fixture(scope="session")
def client(settings):  # type: ignore[no-untyped-def]
    """The real app (migrations, Redis, demo catalog, flusher) behind a TestClient."""
    from fastapi.testclient import TestClient

    from storefront.app import create_app

    # a loopback peer, as a local Prometheus is: /metrics answers it
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as c:
        yield c
