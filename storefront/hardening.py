"""Security headers on every response, and who may read /metrics (docs/security.md).

``SecurityHeaders`` is pure ASGI and outermost: it adds precomputed headers to each response's
start message (a list append; nothing parsed, nothing awaited), the paid call included.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import Forbidden, Unauthorized

from .config import Settings

# Nothing from other hosts. The site's own pages run only /static scripts; the demos (Gradio,
# at /try/) need inline and eval'd scripts and are framed by the model page (same origin).
_BASE = ("default-src 'self'; img-src 'self' data: blob:; font-src 'self' data:; "
         "media-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
         "object-src 'none'; base-uri 'self'; form-action 'self'; ")
SITE_CSP = _BASE + "script-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
DEMO_CSP = (_BASE + "script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
            "style-src 'self' 'unsafe-inline'; frame-ancestors 'self'")


def _headers(csp: str, frame: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", frame.encode())]


SITE_HEADERS = _headers(SITE_CSP, "DENY")
DEMO_HEADERS = _headers(DEMO_CSP, "SAMEORIGIN")


class SecurityHeaders:
    """Pure ASGI middleware: CSP, nosniff, Referrer-Policy and X-Frame-Options on every
    HTTP response (``/try/...``: the demo's CSP, framable by this site only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = DEMO_HEADERS if scope["path"].startswith("/try/") else SITE_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.extend(extra)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def check_metrics_access(request: Request, settings: Settings) -> None:
    """/metrics: ``Authorization: Bearer <AIMARKET_METRICS_TOKEN>`` when that is set; else
    only a loopback peer that is not a proxy forwarding someone else (no X-Forwarded-For)."""
    token = settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.get_secret_value().encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <AIMARKET_METRICS_TOKEN>'",
                               code="metrics_token_required")
        return
    peer = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if not loopback or "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        raise Forbidden("/metrics answers only loopback peers unless AIMARKET_METRICS_TOKEN is "
                        "set", code="metrics_forbidden")
