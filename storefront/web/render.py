"""Rendering pages: Jinja2 templates with the signed-in account and a CSRF token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.responses import Response

from serving import description_html, plain_text

from ..models import Account
from .session import csrf_token, ensure_csrf

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def duration(ms: float | int | str | None) -> str:
    """A latency as people read it: 7 µs, 2.4 ms, 1.2 s."""
    if ms is None or ms == "":
        return "—"
    value = float(ms)
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value < 1000:
        return f"{value:.3g} ms"
    return f"{value / 1000:.3g} s"


templates.env.filters["duration"] = duration
# A seller's description: sanitized HTML on its page, plain text (escaped) in excerpts.
templates.env.filters["description"] = lambda text: Markup(description_html(text or ""))
templates.env.filters["plain"] = lambda text: plain_text(text or "")


def page(request: Request, name: str, account: Account | None, status: int = 200,
         **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, name, {"account": account, "csrf": csrf_token(request), **context},
        status_code=status,
    )
    ensure_csrf(request, response)
    response.headers["Cache-Control"] = "no-store"
    return response
