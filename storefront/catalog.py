"""The catalog: search and sort the listed models, a model's page data, a seller's listings."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from metering import UsageEvent, format_usd
from serving import Manifest, NotFound

from .models import Account, Listing, ListingVersion

SORTS = ("newest", "popular", "price", "latency", "title")


def _newest_live() -> Any:
    return (
        select(ListingVersion.listing_id, func.max(ListingVersion.version).label("v"))
        .where(ListingVersion.status == "live").group_by(ListingVersion.listing_id).subquery()
    )


def catalog(
    db: Session, *, q: str | None, category: str | None, task: str | None, sort: str,
    page: int, page_size: int, max_price: int | None = None,
) -> dict[str, Any]:
    newest = _newest_live()
    calls = (
        select(UsageEvent.listing_id, func.count().label("n"))
        .group_by(UsageEvent.listing_id).subquery()
    )
    n_calls = func.coalesce(calls.c.n, 0)
    query = (
        select(Listing, ListingVersion, Account.name, n_calls)
        .join(newest, newest.c.listing_id == Listing.id)
        .join(ListingVersion, and_(ListingVersion.listing_id == Listing.id,
                                   ListingVersion.version == newest.c.v))
        .join(Account, Account.id == Listing.seller_id)
        .outerjoin(calls, calls.c.listing_id == Listing.id)
        .where(Listing.status == "listed")
    )
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(Listing.title.ilike(like, escape="\\"),
                                Listing.description.ilike(like, escape="\\"),
                                Listing.slug.ilike(like, escape="\\")))
    if category:
        query = query.where(Listing.category == category)
    if task:
        query = query.where(Listing.task == task)
    if max_price is not None:
        query = query.where(ListingVersion.price <= max_price)
    total = db.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    order = {
        "newest": [Listing.created_at.desc()], "popular": [n_calls.desc()],
        "price": [ListingVersion.price.asc()], "latency": [ListingVersion.latency_us.asc()],
        "title": [Listing.title.asc()],
    }[sort]
    rows = db.execute(
        query.order_by(*order, Listing.id.asc()).offset((page - 1) * page_size).limit(page_size)
    ).all()
    return {
        "items": [card(listing, lv, seller, n) for listing, lv, seller, n in rows],
        "page": page, "page_size": page_size, "total": total,
    }


def card(listing: Listing, lv: ListingVersion, seller: str, calls: int) -> dict[str, Any]:
    return {
        "slug": listing.slug, "title": listing.title, "description": listing.description,
        "category": listing.category, "task": listing.task, "seller": seller,
        "version": lv.version, "price_per_call": format_usd(lv.price),
        "trial_calls": lv.trial_calls, "latency_ms": round(lv.latency_us / 1000, 3),
        "calls_served": calls,
    }


def detail(db: Session, slug: str) -> dict[str, Any]:
    row = db.execute(
        select(Listing, Account.name).join(Account, Account.id == Listing.seller_id)
        .where(Listing.slug == slug, Listing.status == "listed")
    ).first()
    if row is None:
        raise NotFound(f"no listed model '{slug}'", code="model_not_found")
    listing, seller = row
    versions = db.execute(
        select(ListingVersion).where(ListingVersion.listing_id == listing.id,
                                     ListingVersion.status == "live")
        .order_by(ListingVersion.version.desc())
    ).scalars().all()
    calls = db.execute(
        select(func.count()).where(UsageEvent.listing_id == listing.id)
    ).scalar_one()
    lv = versions[0]
    manifest = Manifest.model_validate_json(lv.manifest_json)
    return {
        **card(listing, lv, seller, calls),
        "inputs": [t.model_dump() for t in manifest.inputs],
        "outputs": [t.model_dump() for t in manifest.outputs],
        "labels": manifest.labels, "feature_names": manifest.feature_names,
        "preprocessing": manifest.preprocessing.model_dump() if manifest.preprocessing else None,
        "max_batch": manifest.max_batch, "license": lv.license,
        "pricing": {
            "per_call": format_usd(lv.price), "trial_calls": lv.trial_calls,
            "export_price": format_usd(lv.export_price) if lv.export_price is not None else None,
            "currency": "USD",
        },
        "versions": [
            {"version": v.version, "latency_ms": round(v.latency_us / 1000, 3),
             "sha256": v.model_sha256, "size_bytes": v.size_bytes, "opset": v.opset,
             "price_per_call": format_usd(v.price),
             "released_at": (v.reviewed_at or v.created_at).isoformat()}
            for v in versions
        ],
        "endpoints": {
            "infer": f"/v2/models/{listing.slug}/infer",
            "predict": f"/v1/models/{listing.slug}/predict",
        },
    }


def seller_listings(db: Session, seller: Account) -> list[dict[str, Any]]:
    rows = db.execute(
        select(Listing, ListingVersion)
        .join(ListingVersion, ListingVersion.listing_id == Listing.id)
        .where(Listing.seller_id == seller.id)
        .order_by(Listing.slug, ListingVersion.version.desc())
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for listing, lv in rows:
        entry = out.setdefault(listing.slug, {
            "slug": listing.slug, "title": listing.title, "status": listing.status, "versions": [],
        })
        entry["versions"].append({
            "version": lv.version, "status": lv.status, "review_reason": lv.review_reason,
            "findings": json.loads(lv.findings or "[]"), "license": lv.license,
            "latency_ms": round(lv.latency_us / 1000, 3), "price_per_call": format_usd(lv.price),
            "created_at": lv.created_at.isoformat(),
        })
    return list(out.values())



def manifest_of(db: Session, slug: str, version: int) -> Manifest:
    """The manifest of one version of a listing (a model page renders from it)."""
    row = db.execute(
        select(ListingVersion.manifest_json).join(Listing)
        .where(Listing.slug == slug, ListingVersion.version == version)
    ).scalar_one()
    return Manifest.model_validate_json(row)
