"""The paid v2 infer routes served before FastAPI's router (pure ASGI).

``POST /v2/models/{slug}/infer`` and ``.../versions/{version}/infer`` are the hot path; routing
them through FastAPI (path matching over every route, dependency solving, the endpoint
wrapper, the exception middleware) costs more per call than the model on a small one. This
wrapper matches the two paths itself and calls the very same ``gateway.paid_call`` (every
rule of the paid call stays in storefront/gateway.py); everything else goes to FastAPI. The
routes stay declared in gateway.py too, so the OpenAPI document lists them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from . import gateway
from .errors import envelope_response

log = logging.getLogger(__name__)
_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([0-9]{1,9}))?/infer")
_UNMETERED = re.compile(r"/internal/unmetered/v2/models/([^/]+)/infer")


class PaidCallFastPath:
    """Pure ASGI middleware: the v2 infer routes go straight to the paid call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = unmetered = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER.fullmatch(scope["path"])
            if match is None:
                unmetered = _UNMETERED.fullmatch(scope["path"])
        if unmetered is not None and scope["app"].state.services.settings.unmetered_route:
            # the benchmark's baseline takes the same door as the paid call
            response = await gateway.unmetered_infer(unmetered.group(1), Request(scope, receive))
            await response(scope, receive, send)
            return
        if match is None:
            await self.app(scope, receive, send)
            return
        slug, version = match.group(1), match.group(2)
        request: Any = Request(scope, receive)
        try:
            response = await gateway.paid_call(
                request, slug, int(version) if version else None, gateway._v2_decode,
                gateway._v2_encode)
        except Exception:
            log.exception("unhandled error in the paid call")
            response = envelope_response(500, "internal_error",
                                         "internal error; it has been logged")
        await response(scope, receive, send)
