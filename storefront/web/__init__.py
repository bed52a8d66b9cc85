"""The browser storefront: server-rendered pages and the /try/{slug} demos, wired into the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from sandbox_ui import DemoSpec, TryApps, default_temp_dir
from serving import NotFound

from ..config import Settings
from ..services import Services
from ..tryit import Visitor, demo_call
from . import dashboards, pages
from .render import page
from .session import LoginRequired, PageForbidden, account_id, login_redirect

__all__ = ["install"]


def install(app: FastAPI, settings: Settings) -> TryApps:
    """Add the pages, their static files and the demos to ``app``; the app's lifespan closes
    the demos it returns."""
    app.include_router(pages.router)
    app.include_router(dashboards.router)
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
        client = getattr(request, "client", None)
        visitor = Visitor(account_id(request, svc) if request is not None else None,
                          client.host if client else "unknown")
        return await demo_call(svc, slug, payload, visitor)

    demos = TryApps(lookup, call, concurrency=settings.demo_concurrency,
                    temp_dir=default_temp_dir(settings.data_dir.resolve()))
    app.mount("/try", demos, name="try")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> Response:
        return login_redirect(request)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> Response:
        return page(request, "message.html", None, status=403, title="Not allowed",
                    message=exc.message)

    return demos
