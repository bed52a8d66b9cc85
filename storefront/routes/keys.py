"""API keys: created with the secret shown once, listed, revoked."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import apikeys
from ..apikeys import KeyChange, NewKey
from ..deps import Buyer, Id, ServicesDep, SessionDep

router = APIRouter(tags=["keys"])


@router.post("/v1/keys", status_code=201)
def create_key(
    account: Buyer, db: SessionDep, svc: ServicesDep, body: NewKey | None = None
) -> dict[str, Any]:
    return apikeys.create_key(db, svc, account, body or NewKey())


@router.get("/v1/keys")
def list_keys(account: Buyer, db: SessionDep) -> dict[str, Any]:
    return {"items": apikeys.list_keys(db, account)}


@router.patch("/v1/keys/{key_id}")
def change_key(
    key_id: Id, body: KeyChange, account: Buyer, db: SessionDep, svc: ServicesDep
) -> dict[str, Any]:
    return apikeys.change_key(db, svc, account, key_id, body)


@router.delete("/v1/keys/{key_id}")
def revoke_key(key_id: Id, account: Buyer, db: SessionDep, svc: ServicesDep) -> dict[str, Any]:
    return apikeys.revoke_key(db, svc, account, key_id)
