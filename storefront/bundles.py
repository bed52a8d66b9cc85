"""A buyer's export licences and bundles as they read them: in the API and on the buyer's
dashboard (where a bundle downloads with the session, not an API token). Kit orders live in
``kit_orders``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from metering import format_usd
from serving import NotFound

from .models import Account, Export, Listing, ListingVersion, Purchase


def export_json(e: Export, slug: str, version: int) -> dict[str, Any]:
    return {"id": e.id, "slug": slug, "version": version, "target": e.target,
            "license_id": e.license_id, "sha256": e.sha256, "size_bytes": e.size_bytes,
            "agreement": e.agreement, "max_diff": e.max_diff, "precision": e.precision,
            "watermarked": e.watermarked, "created_at": e.created_at.isoformat(),
            "download": f"/v1/exports/{e.id}/download"}


def bundle_path(data_dir: Path, export_id: str) -> Path:
    return data_dir / "exports" / f"{export_id}.zip"


def owned_export(db: Session, export_id: str, account: Account) -> tuple[Export, str, int]:
    """The export, its listing's slug and version; 404 unless ``account`` bought it (or is an
    admin)."""
    row = db.execute(
        select(Export, Listing.slug, ListingVersion.version)
        .join(ListingVersion, ListingVersion.id == Export.listing_version_id)
        .join(Listing, Listing.id == ListingVersion.listing_id).where(Export.id == export_id)
    ).first()
    if row is None or (row[0].buyer_id != account.id and account.role != "admin"):
        raise NotFound(f"no export '{export_id}'", code="export_not_found")
    return row[0], row[1], row[2]


def exports_of(db: Session, account: Account) -> list[dict[str, Any]]:
    rows = db.execute(
        select(Export, Listing.slug, ListingVersion.version)
        .join(ListingVersion, ListingVersion.id == Export.listing_version_id)
        .join(Listing, Listing.id == ListingVersion.listing_id)
        .where(Export.buyer_id == account.id).order_by(Export.created_at.desc())
    ).all()
    return [export_json(e, s, v) for e, s, v in rows]


def licences_of(db: Session, account: Account) -> list[dict[str, Any]]:
    rows = db.execute(
        select(Purchase, Listing.slug, Listing.title).join(Listing,
                                                           Listing.id == Purchase.listing_id)
        .where(Purchase.buyer_id == account.id).order_by(Purchase.created_at.desc())
    ).all()
    return [{"id": p.id, "slug": slug, "title": title, "price": format_usd(p.price),
             "created_at": p.created_at.isoformat()} for p, slug, title in rows]

