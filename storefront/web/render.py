"""Rendering pages: Jinja2 templates with the signed-in account and a CSRF token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from ..models import Account
from .session import csrf_token, ensure_csrf

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def page(request: Request, name: str, account: Account | None, status: int = 200,
         **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, name, {"account": account, "csrf": csrf_token(request), **context},
        status_code=status,
    )
    ensure_csrf(request, response)
    response.headers["Cache-Control"] = "no-store"
    return response
