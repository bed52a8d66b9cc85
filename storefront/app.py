"""The FastAPI application: the one composition root."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from billing import metrics as billing_metrics
from metering.metrics import refresh

from . import VERSION, demo, errors, export_jobs, filemodes, gateway, preload, web
from .alert_sender import alerts_loop
from .config import Settings
from .fastpath import PaidCallFastPath
from .hardening import SecurityHeaders, check_metrics_access
from .models import Account
from .routes import (
    accounts,
    admin,
    alerts,
    billing,
    edge,
    exports,
    keys,
    models,
    reviews,
    sellers,
    serving,
    usage,
    v2,
)
from .security import hash_password
from .services import Services, redis_ping
from .workers import metrics_registry

log = logging.getLogger(__name__)


class BootstrapRefused(RuntimeError):
    """AIMARKET_ADMIN_EMAIL names an account the bootstrap did not create."""


def bootstrap_admin(s: Settings, sessions: sessionmaker[Session]) -> None:
    """Create the configured admin account once. It never takes over an existing account:
    one that is already an admin is left as it is (its password too); any other account
    with that e-mail (someone signed it up) stops the start."""
    if not (s.admin_email and s.admin_password):
        return
    email = s.admin_email.lower()
    with sessions() as db:
        account = db.execute(select(Account).where(Account.email == email)).scalar_one_or_none()
        if account is not None and account.role != "admin":
            raise BootstrapRefused(
                f"AIMARKET_ADMIN_EMAIL={email} is an existing {account.role} account that the "
                "admin bootstrap did not create; refusing to make it an admin. Choose another "
                "e-mail for AIMARKET_ADMIN_EMAIL (or promote that account yourself in the "
                "database if it really is yours)")
        if account is None:
            db.add(Account(email=email, name="admin", role="admin",
                           password_hash=hash_password(s.admin_password.get_secret_value())))
            db.commit()


async def billing_loop(svc: Services, every_s: float) -> None:
    """Stripe mode: push postpaid usage to Stripe's meter on a timer (the outbox keeps what a
    failed round could not send for the next one)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await svc.billing.sync()
        except Exception:
            log.exception("billing sync failed; pending usage stays in the outbox")


def seed_demo(settings: Settings, sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        demo.seed(db, settings)


async def preload_models(svc: Services) -> None:
    """Load live versions while the model memory budget allows (the most called first)."""
    try:
        versions = await run_in_threadpool(_versions_by_calls, svc)
        n = await preload.preload(svc.backend, versions)
        log.info("preloaded %d of %d live versions", n, len(versions))
    except Exception:
        log.exception("preloading models failed; they load on their first call")


def _versions_by_calls(svc: Services) -> list[Any]:
    with svc.sessions() as db:
        return preload.by_calls(db, svc.settings.data_dir)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        filemodes.secure(settings)  # before anything writes into the data dir
        svc = await Services.start(settings)
        app.state.services = svc
        syncer: asyncio.Task[None] | None = None
        preloader: asyncio.Task[None] | None = None
        alerter: asyncio.Task[None] | None = None
        try:
            await run_in_threadpool(bootstrap_admin, settings, svc.sessions)
            if settings.seed_demo:
                await run_in_threadpool(seed_demo, settings, svc.sessions)
            # live listings answer their first call without waiting for a deployment
            await svc.registry.deploy_live()
            await run_in_threadpool(export_jobs.resume, svc)  # builds a stop left queued
            if settings.run_flusher:
                svc.start_flusher()
            preloader = asyncio.create_task(preload_models(svc))
            if svc.billing.stripe is not None and settings.billing_sync_interval_s > 0:
                syncer = asyncio.create_task(billing_loop(svc, settings.billing_sync_interval_s))
            if settings.alerts_interval_s > 0:  # safe in every worker: claims are atomic
                alerter = asyncio.create_task(alerts_loop(svc, settings.alerts_interval_s))
            # Start-up objects (libraries, demo training) never die: keep them out of the
            # cyclic GC, whose full passes over them paused paid calls for ~120 ms.
            gc.collect()
            gc.freeze()
            yield
        finally:
            for task in (syncer, preloader, alerter):
                if task is not None:
                    task.cancel()
            await demos.close()
            await svc.close()

    app = FastAPI(
        title="aimarket", version=VERSION, lifespan=lifespan,
        description="AI-model marketplace with hosted, pay-per-call inference.",
        # FastAPI's OpenTelemetry bridge looks up three global providers on every request;
        # this app's metrics are Prometheus (/metrics) and no OTel SDK is installed
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    app.add_middleware(PaidCallFastPath)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so on every response
    for router in (accounts.router, alerts.router, keys.router, models.router, admin.router,
                   usage.router, exports.router, edge.router, billing.router, serving.router,
                   v2.router, reviews.router, sellers.router):
        app.include_router(router)
    app.include_router(gateway.router)
    if settings.unmetered_route:
        app.include_router(gateway.unmetered)
    demos = web.install(app, settings)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        svc: Services = app.state.services
        await redis_ping(svc.redis)
        return {"status": "ok", "backend": svc.backend.name}

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        """Prometheus text: a Bearer AIMARKET_METRICS_TOKEN when set, else loopback only."""
        svc: Services = app.state.services
        check_metrics_access(request, svc.settings)
        with contextlib.suppress(redis.exceptions.RedisError):  # scrape what we have
            await refresh(svc.redis, svc.settings.redis_namespace)
        await run_in_threadpool(billing_metrics.refresh, svc.engine)
        return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)

    return app
