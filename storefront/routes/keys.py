"""API keys: created with the secret shown once, listed, revoked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from serving import NotFound

from ..deps import Buyer, ServicesDep, SessionDep
from ..models import ApiKey
from ..security import KEY_PREFIX, new_api_key

router = APIRouter(tags=["keys"])


class NewKey(BaseModel):
    name: str = Field("", max_length=120)


def key_json(k: ApiKey) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "prefix": f"{KEY_PREFIX}_{k.prefix}",
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}


@router.post("/v1/keys", status_code=201)
def create_key(account: Buyer, db: SessionDep, body: NewKey | None = None) -> dict[str, Any]:
    secret, prefix, digest = new_api_key()
    key = ApiKey(account_id=account.id, prefix=prefix, secret_hash=digest,
                 name=(body.name if body else ""))
    db.add(key)
    db.commit()
    return {**key_json(key), "key": secret,
            "note": "store this key now: it is shown once and kept only as a hash"}


@router.get("/v1/keys")
def list_keys(account: Buyer, db: SessionDep) -> dict[str, Any]:
    keys = db.execute(
        select(ApiKey).where(ApiKey.account_id == account.id).order_by(ApiKey.id)
    ).scalars().all()
    return {"items": [key_json(k) for k in keys]}


@router.delete("/v1/keys/{key_id}")
def revoke_key(key_id: int, account: Buyer, db: SessionDep, svc: ServicesDep) -> dict[str, Any]:
    key = db.get(ApiKey, key_id)
    if key is None or key.account_id != account.id:
        raise NotFound(f"no key {key_id}", code="key_not_found")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        db.commit()
    svc.keys.forget(key.prefix)
    return key_json(key)
