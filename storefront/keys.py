"""API key authentication for the paid call: prefix lookup, hash compare, short cache."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from billing import BillingProfile
from serving import Unauthorized

from .models import ApiKey
from .security import hash_secret, same_hash, split_api_key


@dataclass(frozen=True)
class KeyPrincipal:
    key_id: int
    account_id: int
    secret_hash: str
    rps: float
    burst: int
    cap_day: int | None
    cap_month: int | None
    credit_line: int = 0  # postpaid buyers: how far credit may go below zero


class KeyCache:
    """Resolves ``Authorization: Bearer amk_...`` to a key; revocation clears it here at once
    and reaches other workers within ``ttl`` seconds."""

    def __init__(self, engine: Engine, ttl: float, *, rps: float, burst: int) -> None:
        self.engine = engine
        self.ttl = ttl
        self.default_rps, self.default_burst = rps, burst
        self._cache: dict[str, tuple[float, KeyPrincipal | None]] = {}

    async def authenticate(self, authorization: str | None) -> KeyPrincipal:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>'", code="missing_key"
            )
        parts = split_api_key(authorization[7:].strip())
        if parts is None:
            raise Unauthorized("malformed API key", code="invalid_key")
        prefix, secret = parts
        now = time.monotonic()
        hit = self._cache.get(prefix)
        if hit is None or hit[0] <= now:
            principal = await run_in_threadpool(self._load, prefix)
            hit = (now + self.ttl, principal)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[prefix] = hit
        principal = hit[1]
        if principal is None or not same_hash(principal.secret_hash, hash_secret(secret)):
            raise Unauthorized("invalid or revoked API key", code="invalid_key")
        return principal

    def forget(self, prefix: str) -> None:
        self._cache.pop(prefix, None)

    def _load(self, prefix: str) -> KeyPrincipal | None:
        with Session(self.engine) as s:
            row = s.execute(
                select(ApiKey, BillingProfile.credit_line)
                .outerjoin(BillingProfile, BillingProfile.account_id == ApiKey.account_id)
                .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            ).one_or_none()
        if row is None:
            return None
        key, line = row
        return KeyPrincipal(
            key.id, key.account_id, key.secret_hash,
            rps=key.rate_limit_rps or self.default_rps,
            burst=key.rate_limit_burst or self.default_burst,
            cap_day=key.spend_cap_day, cap_month=key.spend_cap_month, credit_line=line or 0,
        )
