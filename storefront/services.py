"""The running app's parts, built once at start-up from Settings (the composition)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import redis
import redis.asyncio as aioredis
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as SyncCluster
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from billing import Billing, BillingPolicy, StripeConfig, StripeGateway
from export import Signer
from metering import DemoMeter, Flusher, Meter, Snapshot, snapshot, to_micro
from serving import Backend, BackendRouter, make_backend

from . import purchases
from .config import Settings
from .db import make_engine, migrate, session_factory
from .embedded import EmbeddedRedis, refuse_if_in_use
from .keys import KeyCache
from .registry import Registry

log = logging.getLogger(__name__)


def async_redis(url: str, *, cluster: bool = False) -> aioredis.Redis | AsyncCluster:
    """The hot path's client: short timeouts, no automatic retries (a command that may have
    run is never sent twice; a failed call answers 503 and its hold is refunded by release
    or by the flusher's sweep). With ``cluster`` a Redis Cluster client that follows MOVED
    and ASK (the redirected command did not run) but retries nothing else."""
    if cluster:
        return AsyncCluster.from_url(
            url, socket_timeout=2, socket_connect_timeout=0.5, max_connections=256,
            retry=Retry(NoBackoff(), 0), require_full_coverage=False,
        )
    return aioredis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=0.5, max_connections=256,
        retry=Retry(NoBackoff(), 0),
    )


def sync_redis(url: str, *, cluster: bool = False) -> redis.Redis | SyncCluster:
    """The flusher's and the operator commands' client."""
    if cluster:
        return SyncCluster.from_url(url, socket_timeout=10, socket_connect_timeout=1,
                                    require_full_coverage=False)
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=1)


async def redis_ping(client: aioredis.Redis | AsyncCluster) -> bool:
    """Readiness of the metering Redis: the server answers; on a cluster, one primary does
    (one that is away refuses only the calls of the accounts in its shards, so a gateway
    stays in service for the others)."""
    if isinstance(client, AsyncCluster):
        return bool(await client.ping(target_nodes=AsyncCluster.RANDOM))
    return bool(await client.ping())


def build_meter(settings: Settings, client: aioredis.Redis | AsyncCluster, engine: Engine
                ) -> Meter:
    """The meter on ``client``, rebuilding missing counters from the ledger on ``engine``."""
    async def load_snapshot(account_id: int) -> Snapshot:
        return await run_in_threadpool(snapshot, engine, account_id)

    return Meter(client, fee_bps=settings.platform_fee_bps, load_snapshot=load_snapshot,
                 namespace=settings.redis_namespace, leases=settings.meter_leases)


def build_flusher(settings: Settings, client: redis.Redis | SyncCluster, engine: Engine
                  ) -> Flusher:
    return Flusher(client, engine, namespace=settings.redis_namespace,
                   hold_timeout_s=settings.hold_timeout_s,
                   claim_idle_ms=settings.flush_claim_idle_ms)


def build_billing(settings: Settings, engine: Engine, meter: Meter) -> Billing:
    """Stripe mode with an API key, ledger-only mode without one."""
    gateway = None
    if settings.stripe_api_key is not None:
        gateway = StripeGateway(StripeConfig(
            api_key=settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            webhook_secret=settings.stripe_webhook_secret.get_secret_value()
            if settings.stripe_webhook_secret else None,
            public_url=settings.public_url.rstrip("/"),
        ))
    policy = BillingPolicy(credit_line=to_micro(settings.postpaid_credit_line))
    return Billing(engine, gateway, meter.add_credits, policy)


def _wire_secret(settings: Settings) -> str:
    """The secret Ray replicas ask of callers: the same in every gateway process."""
    return hashlib.sha256(b"aimarket ray wire\0" + settings.signing_key().encode()).hexdigest()


def triton_options(settings: Settings) -> dict[str, Any]:
    """make_backend's Triton arguments: the bundled server's workspace, or an existing one."""
    return {"triton_workspace": settings.data_dir / "triton", "triton_url": settings.triton_url,
            "triton_repository": settings.triton_model_repository,
            "triton_format": settings.triton_repository_format}


def build_backend(settings: Settings) -> Backend:
    """The default backend, or a router over every enabled one (AIMARKET_SERVING_BACKENDS)."""
    def one(name: str) -> Backend:
        return make_backend(name, inline_us=settings.inline_infer_us,
                            memory_budget=settings.model_memory_bytes(),
                            load_wait_s=settings.model_load_wait_s,
                            ray_address=settings.ray_address,
                            ray_temp_dir=settings.data_dir / "ray",
                            ray_wire_secret=_wire_secret(settings),
                            ray_idle_s=settings.ray_idle_s, **triton_options(settings))

    names = settings.enabled_backends()
    if names == [settings.serving_backend]:
        return one(settings.serving_backend)
    return BackendRouter({n: one(n) for n in names}, settings.serving_backend)


@dataclass
class Services:
    """The object graph of a running app, built once by ``start`` (the only place)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: aioredis.Redis | AsyncCluster
    redis_sync: SyncRedis | SyncCluster
    redis_url: str
    meter: Meter
    demos: DemoMeter
    backend: Backend
    registry: Registry
    keys: KeyCache
    flusher: Flusher
    signer: Signer
    billing: Billing
    embedded: EmbeddedRedis | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _child: subprocess.Popen[bytes] | None = None

    @cached_property
    def signing_key(self) -> str:
        return self.settings.signing_key()

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.sqlalchemy_url)
        await run_in_threadpool(migrate, engine)
        embedded = None
        url = settings.redis_url
        if url is None:
            refuse_if_in_use(settings)
            embedded = EmbeddedRedis(settings.data_dir)
            url = await run_in_threadpool(embedded.start)
        cluster = settings.redis_cluster
        client, sync_client = async_redis(url, cluster=cluster), sync_redis(url, cluster=cluster)
        meter = build_meter(settings, client, engine)
        backend = build_backend(settings)
        await backend.start()
        svc = cls(
            settings=settings, engine=engine, sessions=session_factory(engine), redis=client,
            redis_sync=sync_client, redis_url=url, meter=meter, demos=DemoMeter(meter),
            backend=backend, registry=Registry(engine, backend, settings.data_dir,
                                               load_wait_s=settings.model_load_wait_s),
            keys=KeyCache(engine, settings.key_cache_seconds, rps=settings.rate_limit_rps,
                          burst=settings.rate_limit_burst),
            flusher=build_flusher(settings, sync_client, engine), embedded=embedded,
            signer=Signer(settings.data_dir / "keys" / "export-ed25519.pem"),
            billing=build_billing(settings, engine, meter),
        )
        # An export licence paid by card is bought from the credited payment by the webhook.
        svc.billing.fulfil["licence"] = partial(purchases.licence_paid, svc)
        return svc

    def start_flusher(self) -> None:
        """Run the ledger flusher in a child process (off this process's GIL and event loop)
        or, with ``flusher_process`` off, in a thread."""
        if self.settings.flusher_process:
            env = {**os.environ, **self.settings.as_env(), "AIMARKET_REDIS_URL": self.redis_url}
            self._child = subprocess.Popen(
                [sys.executable, "-m", "storefront.cli", "ledger", "flush",
                 "--parent-pid", str(os.getpid())], env=env)
            return
        self._thread = threading.Thread(
            target=self.flusher.run, args=(self._stop,),
            kwargs={"block_ms": self.settings.flush_interval_ms,
                    "gather_ms": self.settings.flush_gather_ms}, name="ledger-flusher",
            daemon=True,
        )
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        if self._child is not None:
            self._child.terminate()
            await asyncio.to_thread(self._child.wait, 15)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        if self._thread is not None or self._child is not None:
            # A last flush so a clean stop leaves nothing behind in Redis.
            try:
                await asyncio.to_thread(self.flusher.drain)
            except Exception:
                log.exception("final ledger flush failed; events stay in Redis for next start")
        await self.backend.close()
        await self.meter.close()
        await self.redis.aclose()
        self.redis_sync.close()
        self.engine.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
