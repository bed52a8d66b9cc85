"""The app's doors to the one error envelope: every handler renders through ``error_reply``."""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving.errors import AimarketError, InvalidInput, MeteringUnavailable, error_reply

log = logging.getLogger(__name__)


def error_response(exc: BaseException) -> Response:
    """Any exception as the JSON envelope response (an unexpected one as a logged 500)."""
    reply = error_reply(exc)
    if reply.status == 500:
        log.error("unhandled error", exc_info=exc)
    return Response(reply.body, status_code=reply.status, headers=reply.headers)


def validation_error(exc: RequestValidationError) -> InvalidInput:
    problems = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
        for e in exc.errors()
    ]
    msg = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return InvalidInput(f"invalid request: {msg}", details=problems)


def install(app: FastAPI) -> None:
    async def render(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def metering_down(_: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", exc)
        return error_response(MeteringUnavailable())

    app.add_exception_handler(AimarketError, render)
    app.add_exception_handler(HTTPException, render)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(redis.exceptions.RedisError, metering_down)
    app.add_exception_handler(Exception, render)  # the 500 of last resort, logged
