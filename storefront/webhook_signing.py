"""Signed alert webhooks, Stripe's scheme: ``Aimarket-Signature: t=<unix>,v1=<hex>`` where
``v1`` is HMAC-SHA256 with the endpoint's secret over ``"<t>.<raw body>"``. Standard library
only, so a receiver can copy ``verify`` as it is (the README shows it)."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Aimarket-Signature"
TOLERANCE_S = 300  # a receiver refuses signatures older than this (replays)


def signature(secret: str, body: bytes, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The ``Aimarket-Signature`` header value of ``body`` signed at ``t`` (now)."""
    t = int(time.time()) if t is None else t
    return f"t={t},v1={signature(secret, body, t)}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = TOLERANCE_S,
           now: float | None = None) -> bool:
    """True when ``header`` signs exactly ``body`` with ``secret`` within ``tolerance_s``."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    sigs = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not sigs:
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = signature(secret, body, t)
    return any(hmac.compare_digest(expected, s) for s in sigs)
