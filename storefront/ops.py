"""Operator commands' plumbing: reach the ledger and the Redis the app uses (built by the same
functions as the running app's ``Services``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import redis
from redis.cluster import RedisCluster
from sqlalchemy import Engine

from billing import Billing
from metering import Flusher

from .config import Settings
from .db import make_engine, migrate
from .embedded import EmbeddedRedis
from .services import async_redis, build_billing, build_flusher, build_meter, sync_redis

T = TypeVar("T")


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
def redis_server(settings: Settings) -> Iterator[str]:
    """The URL of the configured Redis, of the running app's embedded one, or of an embedded
    one started for the duration."""
    url = settings.redis_url or _running_embedded(settings)
    if url is not None:
        yield url
        return
    embedded = EmbeddedRedis(settings.data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@contextmanager
def ledger_parts(settings: Settings, redis_url: str | None = None
                 ) -> Iterator[tuple[redis.Redis | RedisCluster, Engine, Flusher]]:
    """(Redis client, ledger engine, flusher) for ``redis_url`` or the configured or embedded
    servers; the embedded Redis is started for the duration when `aimarket up` is not
    running."""
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    with nullcontext(redis_url) if redis_url else redis_server(settings) as url:
        client = sync_redis(url, cluster=settings.redis_cluster)
        try:
            yield client, engine, build_flusher(settings, client, engine)
        finally:
            client.close()
            engine.dispose()


async def run_billing(settings: Settings, job: Callable[[Billing], Awaitable[T]]) -> T:
    """Run ``job`` with the billing service of these settings, as a batch process: the
    ledger's stream is flushed first so the usage it reports is complete."""
    with redis_server(settings) as url, ledger_parts(settings, url) as (_, engine, flusher):
        await asyncio.to_thread(flusher.drain)
        aclient = async_redis(url, cluster=settings.redis_cluster)
        try:
            return await job(build_billing(settings, engine, build_meter(settings, aclient,
                                                                          engine)))
        finally:
            await aclient.aclose()
