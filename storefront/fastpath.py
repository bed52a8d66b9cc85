"""The paid v2 infer routes' front door, before FastAPI's router (pure ASGI).

``POST /v2/models/{slug}/infer`` and ``.../versions/{version}/infer`` are the hot path; routing
them through FastAPI (path matching over every route, dependency solving, the endpoint
wrapper, the exception middleware) costs more per call than the model on a small one. This
door matches the two paths itself and calls the route functions FastAPI documents
(``gateway.v2_infer`` / ``gateway.v2_infer_version``): the code that runs is the code in the
OpenAPI document; only the routing differs. Everything else goes to FastAPI (a version too
long for the pattern too: FastAPI runs the same function and validates the number).
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from . import gateway
from .errors import error_response

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
        request = Request(scope, receive)
        try:
            if version is None:
                response = await gateway.v2_infer(slug, request)
            else:
                response = await gateway.v2_infer_version(slug, int(version), request)
        except Exception as exc:  # the route answers its own errors: this is a bug, logged
            response = error_response(exc)
        await response(scope, receive, send)
