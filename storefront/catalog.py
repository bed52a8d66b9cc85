"""The catalog: search and sort the listed models, a model's page data, a seller's listings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from metering import ListingCounter, format_usd
from serving import Manifest, NotFound

from .lifecycle import version_state
from .models import Account, Listing, ListingVersion
from .publishing import seller_findings
from .ratings import rating_json

SORTS = ("newest", "popular", "price", "latency", "title", "rating")


def catalog(
    db: Session, *, q: str | None, category: str | None, task: str | None, sort: str,
    page: int, page_size: int, max_price: int | None = None,
) -> dict[str, Any]:
    """One page of the listed models. The page's ids are chosen on ``listings`` alone (its
    newest live version, price and latency are on its row, kept by triggers; each sort has an
    index), then only those rows are loaded; calls served come from the counter the flusher
    keeps, never a COUNT over usage events."""
    query = select(Listing.id).where(
        Listing.status == "listed", Listing.live_version_id.is_not(None))
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # SQLite's LIKE already ignores ASCII case, and its lower() folds nothing more: plain
        # LIKE matches the same rows without lower-casing every description per request.
        sqlite = db.get_bind().dialect.name == "sqlite"
        query = query.where(or_(*(
            (col.like(like, escape="\\") if sqlite else col.ilike(like, escape="\\"))
            for col in (Listing.title, Listing.description, Listing.slug))))
    if category:
        query = query.where(Listing.category == category)
    if task:
        query = query.where(Listing.task == task)
    if max_price is not None:
        query = query.where(Listing.live_price <= max_price)
    counted = select(func.count()).select_from(query.subquery())
    orders: dict[str, list[Any]] = {
        "newest": [Listing.created_at.desc(), Listing.id.asc()],
        "popular": [ListingCounter.calls_served.desc(), ListingCounter.listing_id.asc()],
        "price": [Listing.live_price.asc(), Listing.id.asc()],
        "latency": [Listing.live_latency_us.asc(), Listing.id.asc()],
        "title": [Listing.title.asc(), Listing.id.asc()],
        # best average first, then the better supported one (rating_milli is 0 unrated)
        "rating": [Listing.rating_milli.desc(), Listing.rating_count.desc(), Listing.id.asc()],
    }
    order = orders[sort]
    if sort == "popular":  # every listing with a version has a counter row (migration 0009)
        query = query.join(ListingCounter, ListingCounter.listing_id == Listing.id)
    window = query.order_by(*order).offset((page - 1) * page_size).limit(page_size)
    if q:  # a text search reads every row anyway: count them in the same pass
        rows = db.execute(window.add_columns(func.count().over())).all()
        chosen = [lid for lid, _n in rows]
        total = int(rows[0][1]) if rows else db.execute(counted).scalar_one()
    else:  # the count is an index-only scan; the page stops at page_size rows of an index
        total = db.execute(counted).scalar_one()
        chosen = list(db.execute(window).scalars())
    return {
        "items": [card(*row) for row in cards(db, chosen)],
        "page": page, "page_size": page_size, "total": total,
    }


Card = tuple[Listing, ListingVersion, str, int, str | None]


def cards(db: Session, chosen: Sequence[int]) -> list[Card]:
    """The chosen listings with their newest live version, seller and calls, in their order."""
    if not chosen:
        return []
    rows = db.execute(
        select(Listing, ListingVersion, Account.name,
               func.coalesce(ListingCounter.calls_served, 0), Account.handle)
        .join(ListingVersion, ListingVersion.id == Listing.live_version_id)
        .join(Account, Account.id == Listing.seller_id)
        .outerjoin(ListingCounter, ListingCounter.listing_id == Listing.id)
        .where(Listing.id.in_(chosen))
    ).all()
    by_id = {listing.id: (listing, lv, seller, int(n), handle)
             for listing, lv, seller, n, handle in rows}
    return [by_id[lid] for lid in chosen if lid in by_id]


def calls_served(db: Session, listing_id: int) -> int:
    """Calls (trial, paid, demo) the ledger holds for the listing, from its counter."""
    n = db.execute(select(ListingCounter.calls_served)
                   .where(ListingCounter.listing_id == listing_id)).scalar()
    return int(n or 0)


def card(listing: Listing, lv: ListingVersion, seller: str, calls: int,
         handle: str | None = None) -> dict[str, Any]:
    return {
        "slug": listing.slug, "title": listing.title, "description": listing.description,
        "category": listing.category, "task": listing.task, "seller": seller,
        "seller_handle": handle, "seller_url": f"/sellers/{handle}" if handle else None,
        "version": lv.version, "price_per_call": format_usd(lv.price),
        "trial_calls": lv.trial_calls, "latency_ms": round(lv.latency_us / 1000, 3),
        "calls_served": calls, "rating": rating_json(listing),
    }


def detail(db: Session, slug: str) -> dict[str, Any]:
    row = db.execute(
        select(Listing, Account.name, Account.handle)
        .join(Account, Account.id == Listing.seller_id)
        .where(Listing.slug == slug, Listing.status == "listed")
    ).first()
    if row is None:
        raise NotFound(f"no listed model '{slug}'", code="model_not_found")
    listing, seller, handle = row
    versions = db.execute(
        select(ListingVersion).where(ListingVersion.listing_id == listing.id,
                                     ListingVersion.status == "live")
        .order_by(ListingVersion.version.desc())
    ).scalars().all()
    calls = calls_served(db, listing.id)
    states = {v.id: version_state(listing.slug, v) for v in versions}
    # the version unpinned calls go to (registry.live_row): the newest not deprecated, else
    # the newest before its sunset
    lv = next((v for v in versions if not states[v.id]["deprecated"]), None) or next(
        (v for v in versions if not states[v.id]["sunset_passed"]), versions[0])
    manifest = Manifest.model_validate_json(lv.manifest_json)
    return {
        **card(listing, lv, seller, calls, handle),
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
        "versions": [_version_json(listing.slug, v) for v in versions],
        "endpoints": {
            "infer": f"/v2/models/{listing.slug}/infer",
            "predict": f"/v1/models/{listing.slug}/predict",
        },
    }


def _version_json(slug: str, v: ListingVersion) -> dict[str, Any]:
    state = version_state(slug, v)
    return {"version": v.version, "latency_ms": round(v.latency_us / 1000, 3),
            "sha256": v.model_sha256, "size_bytes": v.size_bytes, "opset": v.opset,
            "price_per_call": format_usd(v.price),
            "released_at": (v.reviewed_at or v.created_at).isoformat(),
            "deprecated": state["deprecated"], "sunset": state["sunset"],
            "sunset_passed": state["sunset_passed"]}


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
            "findings": seller_findings(json.loads(lv.findings or "[]")),
            "license": lv.license,
            "latency_ms": round(lv.latency_us / 1000, 3), "price_per_call": format_usd(lv.price),
            "created_at": lv.created_at.isoformat(),
            "deprecated": lv.deprecated_at is not None,
            "sunset": version_state(listing.slug, lv)["sunset"],
        })
    return list(out.values())



def manifest_of(db: Session, slug: str, version: int) -> Manifest:
    """The manifest of one version of a listing (a model page renders from it)."""
    row = db.execute(
        select(ListingVersion.manifest_json).join(Listing)
        .where(Listing.slug == slug, ListingVersion.version == version)
    ).scalar_one()
    return Manifest.model_validate_json(row)
