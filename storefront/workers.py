"""``aimarket up --workers N``: several uvicorn worker processes behind one port.

The parent process owns what there must be one of: the embedded Valkey (when no Redis URL is
set), the schema migration, the admin bootstrap and demo seeding (before any worker starts, so
workers never race on them), the ledger flusher and the Stripe billing sender (child
processes). Workers run the app with those turned off. ``/metrics`` sums every worker through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a folder of the data dir
the parent empties at start).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from metering.metrics import EVENTS_FLUSHED

from .config import Settings

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch, read at its import


class WorkersRefused(RuntimeError):
    """These settings cannot run several workers (say which to set instead)."""


def metrics_registry() -> CollectorRegistry:
    """What /metrics reports: this process's registry, or every worker's in multiprocess
    mode (plus the collectors that read shared state at scrape time)."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(EVENTS_FLUSHED)
    return registry


def app_factory() -> Any:
    """A worker's app (uvicorn imports this in each worker process)."""
    from .app import create_app

    return create_app(Settings())


def check(settings: Settings) -> None:
    """Refuse engines each worker would start a private copy of."""
    if "ray" in settings.enabled_backends() and not settings.ray_address:
        raise WorkersRefused(
                "--workers with the ray backend needs a running Ray cluster shared by the "
                "workers: set AIMARKET_RAY_ADDRESS (e.g. `ray start --head` and its address)")
    if "triton" in settings.enabled_backends() and not settings.triton_url:
        raise WorkersRefused(
            "--workers with the triton backend needs one Triton server shared by the workers: "
            "set AIMARKET_TRITON_URL and AIMARKET_TRITON_MODEL_REPOSITORY")


def _prepare(settings: Settings) -> None:
    """Once, before the workers: schema, signing keys, admin, demo catalog."""
    from export import Signer

    from . import filemodes
    from .app import bootstrap_admin, seed_demo
    from .db import make_engine, migrate, session_factory

    filemodes.secure(settings)
    settings.signing_key()  # created here: workers would race on creating the file
    Signer(settings.data_dir / "keys" / "export-ed25519.pem")
    engine = make_engine(settings.sqlalchemy_url)
    try:
        migrate(engine)
        sessions = session_factory(engine)
        bootstrap_admin(settings, sessions)
        if settings.seed_demo:
            seed_demo(settings, sessions)
    finally:
        engine.dispose()


def run_workers(settings: Settings, *, host: str, port: int, workers: int,
                **uvicorn_options: Any) -> None:
    """Run the app in ``workers`` processes until SIGINT/SIGTERM (blocks)."""
    import uvicorn

    from .embedded import EmbeddedRedis, refuse_if_in_use
    from .ops import ledger_parts

    check(settings)
    embedded = None
    redis_url = settings.redis_url
    if redis_url is None:
        refuse_if_in_use(settings)
        embedded = EmbeddedRedis(settings.data_dir)
        redis_url = embedded.start()
    children: list[subprocess.Popen[bytes]] = []
    metrics_dir = settings.data_dir / "prometheus"
    try:
        _prepare(settings)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = {**os.environ, **settings.as_env(), "AIMARKET_REDIS_URL": redis_url,
               MULTIPROC_ENV: str(metrics_dir.resolve())}
        cli = [sys.executable, "-m", "storefront.cli"]
        if settings.run_flusher:  # one flusher for all workers
            children.append(subprocess.Popen(
                [*cli, "ledger", "flush", "--parent-pid", str(os.getpid())], env=env))
        if settings.stripe_api_key is not None and settings.billing_sync_interval_s > 0:
            children.append(subprocess.Popen(  # one billing sender for all workers
                [*cli, "billing", "sync", "--every", str(settings.billing_sync_interval_s)],
                env=env))
        # the workers inherit this environment (uvicorn spawns them)
        os.environ.update({**env, "AIMARKET_RUN_FLUSHER": "false", "AIMARKET_SEED_DEMO": "false",
                           "AIMARKET_BILLING_SYNC_INTERVAL_S": "0"})
        uvicorn.run("storefront.workers:app_factory", factory=True, host=host, port=port,
                    workers=workers, **uvicorn_options)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        if settings.run_flusher:
            try:  # a last flush: a clean stop leaves nothing behind in Redis
                with ledger_parts(settings, redis_url) as (_, _, flusher):
                    flusher.drain()
            except Exception:
                log.exception("final ledger flush failed; events stay in Redis for next start")
        if embedded is not None:
            embedded.stop()
