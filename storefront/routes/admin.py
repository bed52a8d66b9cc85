"""Moderation (approve / reject with a reason) and credit grants."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, EmailStr

from serving import NotFound

from .. import accounts, moderation, payments
from ..deps import Admin, ServicesDep, SessionDep
from ..moderation import Decision, Rejection
from ..payments import Grant

router = APIRouter(tags=["admin"])


@router.get("/v1/admin/review-queue")
def queue(admin: Admin, db: SessionDep) -> dict[str, Any]:
    return {"items": moderation.review_queue(db)}


@router.post("/v1/admin/models/{slug}/approve")
async def approve(
    slug: str, admin: Admin, svc: ServicesDep, body: Decision | None = None
) -> dict[str, Any]:
    version = await moderation.approve(svc, admin, slug, body or Decision())
    return {"slug": slug, "version": version, "status": "live"}


@router.post("/v1/admin/models/{slug}/reject")
def reject(slug: str, body: Rejection, admin: Admin, db: SessionDep) -> dict[str, Any]:
    version = moderation.reject(db, admin, slug, body)
    return {"slug": slug, "version": version, "status": "rejected", "reason": body.reason}


@router.get("/v1/admin/audit-log")
def audit_log(
    admin: Admin, db: SessionDep, page: Annotated[int, Query(ge=1, le=100_000)] = 1
) -> dict[str, Any]:
    """Who decided what about which version, when and why; newest first."""
    return {"items": moderation.audit_log(db, page), "page": page}


@router.post("/v1/admin/credits", status_code=201)
async def grant_credits(body: Grant, admin: Admin, svc: ServicesDep) -> dict[str, Any]:
    return await payments.grant_credits(svc, admin, body)


class SessionRevocation(BaseModel):
    account_email: EmailStr


@router.post("/v1/admin/sessions/revoke")
def revoke_sessions(body: SessionRevocation, admin: Admin, db: SessionDep) -> dict[str, Any]:
    """End every session of an account (a stolen token, a departing user): its access tokens
    and browser sessions answer 401 from now on."""
    account = accounts.find_account(db, body.account_email)
    if account is None:
        raise NotFound("no such account", code="account_not_found")
    accounts.revoke_sessions(db, account)
    return {"account_email": account.email, "status": "sessions_revoked"}
