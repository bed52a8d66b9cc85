"""The one exception tree of aimarket.

Every error carries its HTTP status and a stable machine-readable code; the storefront renders
all of them in one JSON envelope ``{"error": {"code", "message", "details"}}``. The tree lives
in ``serving`` because it is the lowest package that raises; the others import it from here.
"""

from __future__ import annotations

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
