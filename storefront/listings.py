"""Listings: publish (validate + store), review decisions, and catalog queries."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from metering import UsageEvent, format_usd, to_micro
from serving import Conflict, Forbidden, InvalidInput, Manifest, NotFound
from serving.review import COPY_SCORE, intake, similarity

from .models import Account, Listing, ListingVersion, Review
from .registry import model_path

SORTS = ("newest", "popular", "price", "latency", "title")


def slugify(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60].strip("-")
    return slug or "model"


def store_model(data_dir: Path, data: bytes) -> str:
    """Store bytes content-addressed (atomic rename); returns the sha256."""
    digest = hashlib.sha256(data).hexdigest()
    dest = model_path(data_dir, digest)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    return digest


@dataclass(frozen=True)
class Published:
    slug: str
    version: int
    status: str
    latency_us: int
    sha256: str
    findings: list[dict[str, Any]]


@dataclass(frozen=True)
class Submission:
    """What a seller sends: the upload's bytes (ONNX or an archive), the manifest (unless the
    archive holds it), the license and the attestation of their rights."""

    upload: bytes
    manifest_text: str | bytes | None
    license: str | None = None
    attested: bool = False
    slug: str | None = None


def publish(db: Session, settings: Any, seller: Account, sub: Submission) -> Published:
    """Review an upload automatically, store it and add a version pending moderation."""
    if not sub.attested:
        raise InvalidInput(
            "attest that you hold the rights to publish this model: send attest_rights=true",
            code="rights_not_attested")
    workdir = settings.data_dir / "uploads" / uuid.uuid4().hex
    workdir.mkdir(parents=True)
    try:
        accepted = intake(
            sub.upload, sub.manifest_text, workdir,
            max_bytes=settings.max_upload_mb * 1024 * 1024,
            sandbox={"mem_bytes": settings.smoke_memory_mb << 20, "cpu_s": settings.smoke_cpu_s},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    manifest = accepted.manifest
    license_ = (sub.license or manifest.license or "").strip()
    if not license_:
        raise InvalidInput("declare a license (form field 'license' or manifest 'license'), "
                           "e.g. MIT, Apache-2.0, CC-BY-4.0 or 'proprietary'",
                           code="license_required")
    digest = store_model(settings.data_dir, accepted.data)
    listing = _target_listing(db, seller, manifest, sub.slug)
    findings = accepted.findings + copy_findings(db, seller, accepted)
    last = db.execute(
        select(func.max(ListingVersion.version)).where(ListingVersion.listing_id == listing.id)
    ).scalar_one()
    lv = ListingVersion(
        listing_id=listing.id, version=(last or 0) + 1, model_sha256=digest,
        size_bytes=len(accepted.data), manifest_json=manifest.model_dump_json(),
        price=to_micro(manifest.pricing.per_call), trial_calls=manifest.pricing.trial_calls,
        export_price=(to_micro(manifest.pricing.export_price)
                      if manifest.pricing.export_price is not None else None),
        opset=accepted.opset, latency_us=accepted.latency_us, status="pending_review",
        fingerprint=accepted.fingerprint, sketch=json.dumps(accepted.sketch),
        findings=json.dumps(findings), license=license_[:100],
        rights_attested_at=datetime.now(UTC),
    )
    db.add(lv)
    db.commit()
    return Published(listing.slug, lv.version, lv.status, lv.latency_us, digest, findings)


def copy_findings(db: Session, seller: Account, accepted: Any) -> list[dict[str, Any]]:
    """Flag an upload whose weights match another seller's listed or pending model."""
    rows = db.execute(
        select(Listing.slug, ListingVersion.version, ListingVersion.fingerprint,
               ListingVersion.sketch)
        .join(Listing, Listing.id == ListingVersion.listing_id)
        .where(Listing.seller_id != seller.id,
               ListingVersion.status.in_(("pending_review", "live")))
    ).all()
    found = []
    for slug, version, fp, sk in rows:
        if fp and fp == accepted.fingerprint:
            score, matched = 1.0, -1
        else:
            score, matched = similarity(accepted.sketch, json.loads(sk or "{}"))
        if score >= COPY_SCORE:
            found.append({
                "code": "possible_copy",
                "message": f"possible copy of {slug} (version {version}): "
                           f"{score:.0%} of the weights match"
                           + (" exactly" if matched == -1 else ""),
                "evidence": {"listing": slug, "version": version, "score": round(score, 4),
                             "identical": matched == -1,
                             "tensors_matched": None if matched == -1 else matched},
            })
    return found


def _target_listing(db: Session, seller: Account, manifest: Manifest, slug: str | None) -> Listing:
    if slug is not None:
        listing = db.execute(select(Listing).where(Listing.slug == slug)).scalar_one_or_none()
        if listing is None:
            if slugify(slug) != slug:
                raise InvalidInput("slug may hold only a-z, 0-9 and '-'", code="invalid_slug")
        elif listing.seller_id != seller.id:
            raise Forbidden(f"listing '{slug}' belongs to another seller", code="not_owner")
        else:
            return listing
        base = slug
    else:
        base = slugify(manifest.title)
        mine = db.execute(
            select(Listing).where(Listing.slug == base, Listing.seller_id == seller.id)
        ).scalar_one_or_none()
        if mine is not None:
            return mine
    candidate, n = base, 1
    while db.execute(select(Listing.id).where(Listing.slug == candidate)).first() is not None:
        n += 1
        candidate = f"{base}-{n}"
    listing = Listing(
        slug=candidate, seller_id=seller.id, title=manifest.title,
        description=manifest.description, category=manifest.category, task=manifest.task,
        status="pending",
    )
    db.add(listing)
    db.flush()
    return listing


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
