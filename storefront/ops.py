"""Operator commands' plumbing: reach the ledger and the Redis the app uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from sqlalchemy import Engine

from metering import Flusher

from .config import Settings
from .db import make_engine, migrate
from .embedded import EmbeddedRedis


def _running_embedded(settings: Settings) -> str | None:
    sock = (settings.data_dir / "redis" / "valkey.sock").resolve()
    if not sock.exists():
        return None
    url = f"unix://{sock}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    return url


@contextmanager
def ledger_parts(settings: Settings) -> Iterator[tuple[redis.Redis, Engine, Flusher]]:
    """(Redis client, ledger engine, flusher) for the configured or embedded servers; the
    embedded Redis is started for the duration when `aimarket up` is not running."""
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    embedded = None
    url = settings.redis_url or _running_embedded(settings)
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.start()
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=1)
    flusher = Flusher(client, engine, namespace=settings.redis_namespace,
                      hold_timeout_s=settings.hold_timeout_s,
                      claim_idle_ms=settings.flush_claim_idle_ms)
    try:
        yield client, engine, flusher
    finally:
        client.close()
        engine.dispose()
        if embedded is not None:
            embedded.stop()
