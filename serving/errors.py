"""The one exception tree of aimarket.

Every error carries its HTTP status and a stable machine-readable code; the storefront renders
all of them in one JSON envelope ``{"error": {"code", "message", "details"}}`` made by
``error_reply``. This module is a leaf: it imports nothing of the project (only the standard
library), so every package imports it, ``metering`` included, and export bundles ship it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class AimarketError(Exception):
    """Base of every error aimarket raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = headers or {}


class BadRequest(AimarketError):
    status, code = 400, "bad_request"


class Unauthorized(AimarketError):
    status, code = 401, "unauthorized"


class PaymentRequired(AimarketError):
    status, code = 402, "payment_required"


class Forbidden(AimarketError):
    status, code = 403, "forbidden"


class NotFound(AimarketError):
    status, code = 404, "not_found"


class Conflict(AimarketError):
    status, code = 409, "conflict"


class PayloadTooLarge(AimarketError):
    status, code = 413, "payload_too_large"


class InvalidInput(AimarketError):
    status, code = 422, "invalid_input"


class TooManyRequests(AimarketError):
    status, code = 429, "rate_limited"


class InferenceFailed(AimarketError):
    """The model itself failed on valid input: the caller is not charged."""

    status, code = 502, "inference_failed"


class ServiceUnavailable(AimarketError):
    status, code = 503, "unavailable"


class MeteringUnavailable(ServiceUnavailable):
    """Metering (Redis) could not decide or record the call: it was not served, not charged."""

    code = "metering_unavailable"

    def __init__(self, message: str = "metering is unavailable; the call was not served and "
                 "not charged", **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kw)


# Codes of plain HTTP statuses (a framework's own errors: unknown path, wrong method, ...).
HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_input", 429: "rate_limited",
}


@dataclass(frozen=True)
class ErrorReply:
    """An error as it goes on the wire: status, JSON envelope body, headers."""

    status: int
    body: bytes
    headers: dict[str, str]


def error_reply(exc: BaseException) -> ErrorReply:
    """The one JSON envelope ``{"error": {"code", "message", "details"}}`` of any exception.

    Ours carry their status and code; a framework's HTTP error (anything with ``status_code``
    and ``detail``, as Starlette's) keeps its status; anything else is a 500 that says no more
    than that (the caller logs it). Standard library only: the export bundle ships this module.
    """
    http_status = getattr(exc, "status_code", None)
    if isinstance(exc, AimarketError):
        status, code, message = exc.status, exc.code, exc.message
        details, headers = exc.details, dict(exc.headers)
    elif isinstance(http_status, int) and hasattr(exc, "detail"):
        status, code = http_status, HTTP_CODES.get(http_status, "error")
        message = str(getattr(exc, "detail", ""))
        details, headers = None, dict(getattr(exc, "headers", None) or {})
    else:
        status, code, message = 500, "internal_error", "internal error; it has been logged"
        details, headers = None, {}
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    headers["content-type"] = "application/json"
    data = json.dumps({"error": body}, separators=(",", ":"), default=str).encode()
    return ErrorReply(status, data, headers)
