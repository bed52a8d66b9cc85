"""Moderation: the review queue, the version a moderator decides on, the decision (an
approved version is deployed first) and the audit log of decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased
from starlette.concurrency import run_in_threadpool

from metering import format_usd
from serving import Conflict, Manifest, NotFound

from .deployments import serving_options
from .deps import Id
from .models import Account, Listing, ListingVersion, Review
from .registry import to_live

if TYPE_CHECKING:
    from .services import Services


class Decision(BaseModel):
    version: Id | None = None
    reason: str = Field("", max_length=2000)


class Rejection(Decision):
    reason: str = Field(min_length=1, max_length=2000)


def review_queue(db: Session) -> list[dict[str, Any]]:
    rows = db.execute(
        select(Listing, ListingVersion, Account.email)
        .join(ListingVersion, ListingVersion.listing_id == Listing.id)
        .join(Account, Account.id == Listing.seller_id)
        .where(ListingVersion.status == "pending_review").order_by(ListingVersion.created_at)
    ).all()
    return [
        {"slug": listing.slug, "version": lv.version, "title": listing.title, "seller": email,
         "latency_ms": round(lv.latency_us / 1000, 3), "sha256": lv.model_sha256,
         "size_bytes": lv.size_bytes, "opset": lv.opset, "license": lv.license,
         "findings": json.loads(lv.findings or "[]"),
         "price_per_call": format_usd(lv.price), "submitted_at": lv.created_at.isoformat()}
        for listing, lv, email in rows
    ]


def pending_version(db: Session, slug: str, version: int | None) -> tuple[Listing, ListingVersion]:
    """The version a moderator decides on: the given one or the newest pending one."""
    listing = db.execute(select(Listing).where(Listing.slug == slug)).scalar_one_or_none()
    if listing is None:
        raise NotFound(f"no listing '{slug}'", code="model_not_found")
    q = select(ListingVersion).where(ListingVersion.listing_id == listing.id)
    if version is not None:
        lv = db.execute(q.where(ListingVersion.version == version)).scalar_one_or_none()
        if lv is None:
            raise NotFound(f"'{slug}' has no version {version}", code="version_not_found")
    else:
        lv = db.execute(
            q.where(ListingVersion.status == "pending_review")
            .order_by(ListingVersion.version.desc()).limit(1)
        ).scalar_one_or_none()
        if lv is None:
            raise Conflict(f"'{slug}' has no version waiting for review", code="nothing_pending")
    if lv.status != "pending_review":
        raise Conflict(f"'{slug}' version {lv.version} is already {lv.status}",
                       code="already_reviewed")
    return listing, lv


def decide(
    db: Session, listing: Listing, lv: ListingVersion, admin: Account, decision: str, reason: str
) -> None:
    """Record a moderator decision (the caller has deployed an approved version already)."""
    lv.status = "live" if decision == "approve" else "rejected"
    lv.review_reason = reason
    lv.reviewed_at = datetime.now(UTC)
    if decision == "approve":
        listing.status = "listed"
        # The newest approved version describes the listing.
        manifest = Manifest.model_validate_json(lv.manifest_json)
        listing.title, listing.description = manifest.title, manifest.description
        listing.category, listing.task = manifest.category, manifest.task
    db.add(Review(listing_version_id=lv.id, admin_id=admin.id, decision=decision, reason=reason))
    db.commit()



async def approve(svc: Services, admin: Account, slug: str, body: Decision) -> int:
    """Deploy the version, then record it live (a version that cannot run is not live).
    Returns the version approved."""
    with svc.sessions() as db:
        listing, lv = await run_in_threadpool(pending_version, db, slug, body.version)
        live = to_live(listing, lv, svc.settings.data_dir, serving_options(db, listing.id))
        await svc.backend.deploy(live.ref)
        await run_in_threadpool(decide, db, listing, lv, admin, "approve", body.reason)
    svc.registry.invalidate(slug)
    return lv.version


def reject(db: Session, admin: Account, slug: str, body: Rejection) -> int:
    """Reject the version with the reason the seller sees. Returns the version rejected."""
    listing, lv = pending_version(db, slug, body.version)
    decide(db, listing, lv, admin, "reject", body.reason)
    return lv.version


def audit_log(db: Session, page: int = 1, page_size: int = 50) -> list[dict[str, Any]]:
    """Who decided what about which version, when and why; newest first."""
    moderator = aliased(Account)
    rows = db.execute(
        select(Review, moderator.email, Listing.slug, ListingVersion.version)
        .join(moderator, moderator.id == Review.admin_id)
        .join(ListingVersion, ListingVersion.id == Review.listing_version_id)
        .join(Listing, Listing.id == ListingVersion.listing_id)
        .order_by(Review.id.desc()).offset((page - 1) * page_size).limit(page_size)
    ).all()
    return [
        {"at": r.created_at.isoformat(), "admin": email, "slug": slug, "version": version,
         "decision": r.decision, "reason": r.reason}
        for r, email, slug, version in rows
    ]
