"""The browser storefront: server-rendered pages and the /try/{slug} demos, wired into the app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Scope

from sandbox_ui import DemoSpec, TryApps, UploadLimits, default_temp_dir
from serving import NotFound, TooManyRequests

from ..config import Settings
from ..services import Services
from ..throttle import request_address
from ..tryit import Visitor, demo_call
from . import buying, dashboards, market, pages, selling
from .render import page
from .session import LoginRequired, PageForbidden, account_id, login_redirect

__all__ = ["install"]


def install(app: FastAPI, settings: Settings) -> TryApps:
    """Add the pages, their static files and the demos to ``app``; the app's lifespan closes
    the demos it returns."""
    app.include_router(pages.router)
    app.include_router(dashboards.router)
    app.include_router(market.router)
    app.include_router(selling.router)
    app.include_router(buying.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    async def lookup(slug: str) -> DemoSpec | None:
        svc: Services = app.state.services
        try:
            live = await svc.registry.get(slug)
        except NotFound:
            return None
        return DemoSpec(slug=live.slug, version=live.version, title=live.manifest.title,
                        manifest=live.manifest)

    async def call(slug: str, payload: Any, request: Any) -> dict[str, Any]:
        svc: Services = app.state.services
        signed_in = None if request is None else await run_in_threadpool(
            account_id, request, svc)
        visitor = Visitor(signed_in, request_address(request, svc))
        return await demo_call(svc, slug, payload, visitor)

    async def charge_upload(scope: Scope, nbytes: int) -> None:
        svc: Services = app.state.services
        limit = svc.settings.demo_upload_mb_per_day * 2**20
        if not await svc.demos.charge_upload(request_address(Request(scope), svc), nbytes,
                                             limit):
            raise TooManyRequests(
                f"this address uploaded its {svc.settings.demo_upload_mb_per_day} MB of demo "
                "files for today; come back tomorrow (UTC)", code="upload_quota_exhausted",
                headers={"Retry-After": str(_seconds_to_utc_midnight())})

    uploads = UploadLimits(files_per_request=settings.demo_upload_files,
                           dir_max_bytes=settings.demo_upload_dir_mb * 2**20,
                           charge=charge_upload)
    demos = TryApps(lookup, call, concurrency=settings.demo_concurrency,
                    temp_dir=default_temp_dir(settings.data_dir.resolve()), uploads=uploads)
    app.mount("/try", demos, name="try")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> Response:
        return login_redirect(request)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> Response:
        return page(request, "message.html", None, status=403, title="Not allowed",
                    message=exc.message)

    return demos


def _seconds_to_utc_midnight() -> int:
    return 86_400 - int(time.time()) % 86_400
