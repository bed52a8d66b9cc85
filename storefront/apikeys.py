"""Managing API keys: created with the secret shown once, listed, limited, revoked.
(Authenticating a paid call with a key is :mod:`storefront.keys`.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from metering import format_usd, to_micro
from serving import InvalidInput, NotFound

from .config import MIN_RPS
from .models import Account, ApiKey
from .security import KEY_PREFIX, new_api_key

if TYPE_CHECKING:
    from .services import Services

USD = Field(None, max_length=32, description='USD decimal string, e.g. "5.00"; null: no cap')


class KeyLimits(BaseModel):
    """Limits the key's owner sets: spend caps (per UTC day / month) and a rate limit."""

    spend_cap_day: str | None = USD
    spend_cap_month: str | None = USD
    rate_limit_rps: float | None = Field(None, ge=MIN_RPS, description="calls/s, at least 0.001")
    rate_limit_burst: int | None = Field(None, ge=1, le=100_000)


class NewKey(KeyLimits):
    name: str = Field("", max_length=120)


class KeyChange(KeyLimits):
    name: str | None = Field(None, max_length=120)


def key_json(k: ApiKey) -> dict[str, Any]:
    def usd(v: int | None) -> str | None:
        return None if v is None else format_usd(v)

    return {"id": k.id, "name": k.name, "prefix": f"{KEY_PREFIX}_{k.prefix}",
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            "spend_cap_day": usd(k.spend_cap_day), "spend_cap_month": usd(k.spend_cap_month),
            "rate_limit_rps": k.rate_limit_rps, "rate_limit_burst": k.rate_limit_burst}


def _apply(key: ApiKey, body: KeyLimits, max_rps: float) -> None:
    """Apply the fields the caller sent (an explicit null removes a cap)."""
    sent = body.model_fields_set
    for field in ("spend_cap_day", "spend_cap_month"):
        if field in sent:
            raw = getattr(body, field)
            value = None if raw is None else to_micro(raw, field=field)
            if value is not None and value < 0:
                raise InvalidInput(f"{field} cannot be negative", code="invalid_amount")
            setattr(key, field, value)
    if "rate_limit_rps" in sent:
        if body.rate_limit_rps is not None and body.rate_limit_rps > max_rps:
            raise InvalidInput(f"rate_limit_rps is at most {max_rps:g}", code="invalid_limit")
        key.rate_limit_rps = body.rate_limit_rps
    if "rate_limit_burst" in sent:
        key.rate_limit_burst = body.rate_limit_burst


def create_key(db: Session, svc: Services, account: Account, body: NewKey) -> dict[str, Any]:
    """A new key: its JSON with the secret (``key``), which is shown this once."""
    secret, prefix, digest = new_api_key()
    key = ApiKey(account_id=account.id, prefix=prefix, secret_hash=digest, name=body.name)
    _apply(key, body, svc.settings.max_rate_limit_rps)
    db.add(key)
    db.commit()
    return {**key_json(key), "key": secret,
            "note": "store this key now: it is shown once and kept only as a hash"}


def list_keys(db: Session, account: Account) -> list[dict[str, Any]]:
    keys = db.execute(
        select(ApiKey).where(ApiKey.account_id == account.id).order_by(ApiKey.id)
    ).scalars().all()
    return [key_json(k) for k in keys]


def own_key(db: Session, account: Account, key_id: int) -> ApiKey:
    key = db.get(ApiKey, key_id)
    if key is None or key.account_id != account.id:
        raise NotFound(f"no key {key_id}", code="key_not_found")
    return key


def change_key(
    db: Session, svc: Services, account: Account, key_id: int, body: KeyChange
) -> dict[str, Any]:
    key = own_key(db, account, key_id)
    if body.name is not None:
        key.name = body.name
    _apply(key, body, svc.settings.max_rate_limit_rps)
    db.commit()
    svc.keys.forget(key.prefix)
    return key_json(key)


def revoke_key(db: Session, svc: Services, account: Account, key_id: int) -> dict[str, Any]:
    key = own_key(db, account, key_id)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        db.commit()
    svc.keys.forget(key.prefix)
    return key_json(key)
