"""Renders every error, ours or the framework's, in the one JSON envelope."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving import AimarketError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_input", 429: "rate_limited",
}


def envelope_response(
    status: int, code: str, message: str, details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return Response(
        orjson.dumps({"error": body}), status_code=status, media_type="application/json",
        headers=headers,
    )


def error_response(exc: AimarketError) -> Response:
    return envelope_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(AimarketError)
    async def _ours(_: Request, exc: AimarketError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        msg = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return envelope_response(422, "invalid_input", f"invalid request: {msg}", problems)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return envelope_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis(_: Request, exc: redis.exceptions.RedisError) -> Response:
        log.warning("redis unavailable: %s", exc)
        return envelope_response(
            503, "metering_unavailable",
            "metering is unavailable; the call was not served and not charged",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return envelope_response(500, "internal_error", "internal error; it has been logged")
