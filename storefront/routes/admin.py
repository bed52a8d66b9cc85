"""Moderation (approve / reject with a reason) and credit grants."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import aliased
from starlette.concurrency import run_in_threadpool

from metering import CreditEntry, MoneyError, add_credit, format_usd, to_micro
from serving import Conflict, InvalidInput, NotFound

from .. import listings
from ..deployments import serving_options
from ..deps import Admin, Id, ServicesDep, SessionDep
from ..models import Account, Listing, ListingVersion, Review
from ..registry import to_live

router = APIRouter(tags=["admin"])


class Decision(BaseModel):
    version: Id | None = None
    reason: str = Field("", max_length=2000)


class Rejection(Decision):
    reason: str = Field(min_length=1, max_length=2000)


@router.get("/v1/admin/review-queue")
def queue(admin: Admin, db: SessionDep) -> dict[str, Any]:
    return {"items": listings.review_queue(db)}


@router.post("/v1/admin/models/{slug}/approve")
async def approve(
    slug: str, admin: Admin, svc: ServicesDep, body: Decision | None = None
) -> dict[str, Any]:
    body = body or Decision()
    with svc.sessions() as db:
        listing, lv = await run_in_threadpool(listings.pending_version, db, slug, body.version)
        live = to_live(listing, lv, svc.settings.data_dir, serving_options(db, listing.id))
        await svc.backend.deploy(live.ref)  # deploy first: a version that cannot run is not live
        await run_in_threadpool(listings.decide, db, listing, lv, admin, "approve", body.reason)
    svc.registry.invalidate(slug)
    return {"slug": slug, "version": lv.version, "status": "live"}


@router.post("/v1/admin/models/{slug}/reject")
def reject(slug: str, body: Rejection, admin: Admin, db: SessionDep) -> dict[str, Any]:
    listing, lv = listings.pending_version(db, slug, body.version)
    listings.decide(db, listing, lv, admin, "reject", body.reason)
    return {"slug": slug, "version": lv.version, "status": "rejected", "reason": body.reason}


@router.get("/v1/admin/audit-log")
def audit_log(
    admin: Admin, db: SessionDep, page: Annotated[int, Query(ge=1, le=100_000)] = 1
) -> dict[str, Any]:
    """Who decided what about which version, when and why; newest first."""
    moderator = aliased(Account)
    rows = db.execute(
        select(Review, moderator.email, Listing.slug, ListingVersion.version)
        .join(moderator, moderator.id == Review.admin_id)
        .join(ListingVersion, ListingVersion.id == Review.listing_version_id)
        .join(Listing, Listing.id == ListingVersion.listing_id)
        .order_by(Review.id.desc()).offset((page - 1) * 50).limit(50)
    ).all()
    return {"items": [
        {"at": r.created_at.isoformat(), "admin": email, "slug": slug, "version": version,
         "decision": r.decision, "reason": r.reason}
        for r, email, slug, version in rows
    ], "page": page}


class Grant(BaseModel):
    account_email: str = Field(max_length=254)
    amount: str = Field(max_length=32, description="USD as a decimal string, e.g. \"10.00\"")
    reference: str | None = Field(None, max_length=100, description="idempotency reference")
    note: str = Field("", max_length=500)


def _same_grant(svc: ServicesDep, reference: str, account: Account, amount: int) -> None:
    """A reference already used by another grant (amount or account) is a conflict: echoing
    the new amount would claim a credit that was never made."""
    with svc.sessions() as db:
        entry = db.execute(
            select(CreditEntry).where(CreditEntry.reference == reference)
        ).scalar_one()
    if entry.account_id != account.id or entry.amount != amount or entry.reason != "grant":
        raise Conflict(
            f"reference '{reference}' already credited {format_usd(entry.amount)} USD"
            + ("" if entry.account_id == account.id else " to another account")
            + "; a replay must repeat the same grant", code="reference_conflict",
            details={"reference": reference, "amount": format_usd(entry.amount)})


@router.post("/v1/admin/credits", status_code=201)
async def grant_credits(body: Grant, admin: Admin, svc: ServicesDep) -> dict[str, Any]:
    try:
        amount = to_micro(body.amount)
    except MoneyError as exc:
        raise InvalidInput(str(exc), code="invalid_amount") from exc
    if not 0 < amount <= 1_000_000 * 1_000_000:
        raise InvalidInput("amount must be positive and at most 1000000.00", code="invalid_amount")

    def find() -> Account | None:
        with svc.sessions() as db:
            return db.execute(
                select(Account).where(Account.email == body.account_email.lower())
            ).scalar_one_or_none()

    account = await run_in_threadpool(find)
    if account is None:
        raise NotFound(f"no account '{body.account_email}'", code="account_not_found")
    reference = f"grant:{body.reference or uuid.uuid4().hex}"
    recorded = False

    async def record() -> bool:
        nonlocal recorded
        recorded = await run_in_threadpool(
            add_credit, svc.engine, account.id, amount, reason="grant", reference=reference,
            note=body.note or f"granted by {admin.email}",
        )
        return recorded

    balance = await svc.meter.add_credits(account.id, amount, record)
    if not recorded:  # a replay: idempotent only if it is the same grant
        await run_in_threadpool(_same_grant, svc, reference, account, amount)
    return {"account_email": account.email, "amount": format_usd(amount),
            "credits": format_usd(balance), "reference": reference}
