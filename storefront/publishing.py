"""Publishing: a seller's upload read from its form, reviewed automatically, stored
content-addressed and added as a version waiting for moderation."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from metering import to_micro
from serving import BadRequest, Forbidden, InvalidInput, Manifest, PayloadTooLarge
from serving.review import COPY_SCORE, intake, similarity

from . import edge
from .models import Account, Listing, ListingVersion
from .registry import model_path


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


def publish(db: Session, settings: Any, seller: Account, sub: Submission,
            mark_key: bytes | None = None) -> Published:
    """Review an upload automatically, store it and add a version pending moderation. With
    ``mark_key`` (the watermark key), an upload that copies a listing is also checked for the
    mark of one of its exports' licences (a leaked export re-uploaded)."""
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
    copies = copy_findings(db, seller, accepted)
    findings = accepted.findings + copies
    if copies and mark_key is not None:
        findings += leak_findings(db, settings.data_dir, mark_key, accepted.data, copies)
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
    return Published(listing.slug, lv.version, lv.status, lv.latency_us, digest,
                     seller_findings(findings))


MODERATOR = "moderator"  # a finding's audience: shown to moderators, never to the uploader


def seller_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The review findings the uploader may read (not who leaked a model)."""
    return [f for f in findings if f.get("audience") != MODERATOR]


def leak_findings(db: Session, data_dir: Path, key: bytes, data: bytes,
                  copies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy that carries the watermark of a licence of the copied listing: name the licence
    and its licensee to the moderator (only the moderator: the uploader may be the leaker,
    or someone they passed it to)."""
    slugs = {c["evidence"]["listing"] for c in copies} | (
        {None} if any(c["evidence"]["unreleased"] for c in copies) else set())
    query = select(Listing.id).where(Listing.slug.in_([s for s in slugs if s]))
    ids = set(db.execute(query).scalars())
    if None in slugs:  # an unreleased listing matched: look at every listing's exports
        found = edge.find_mark(db, data_dir, key, data)
    else:
        found = edge.find_mark(db, data_dir, key, data, ids) if ids else None
    if found is None:
        return []
    return [{
        "code": "leaked_export", "audience": MODERATOR,
        "message": f"carries the watermark of export licence {found['license_id']} of "
                   f"{found['listing'].slug}, sold to {found['licensee']} "
                   f"(confidence {found['confidence']:.6f})",
        "evidence": {"license_id": found["license_id"], "licensee": found["licensee"],
                     "listing": found["listing"].slug, "z": round(found["z"], 2)},
    }]


def copy_findings(db: Session, seller: Account, accepted: Any) -> list[dict[str, Any]]:
    """Flag an upload whose weights match another seller's listed or pending model. The
    uploader reads these findings: a match with an unreleased (pending) listing says so
    without naming it, its slug or its version."""
    rows = db.execute(
        select(Listing.slug, ListingVersion.version, ListingVersion.fingerprint,
               ListingVersion.sketch, ListingVersion.status)
        .join(Listing, Listing.id == ListingVersion.listing_id)
        .where(Listing.seller_id != seller.id,
               ListingVersion.status.in_(("pending_review", "live")))
    ).all()
    found = []
    for slug, version, fp, sk, status in rows:
        if fp and fp == accepted.fingerprint:
            score, matched = 1.0, -1
        else:
            score, matched = similarity(accepted.sketch, json.loads(sk or "{}"))
        if score >= COPY_SCORE:
            public = status == "live"
            what = f"{slug} (version {version})" if public else "an unreleased listing"
            found.append({
                "code": "possible_copy",
                "message": f"possible copy of {what}: "
                           f"{score:.0%} of the weights match"
                           + (" exactly" if matched == -1 else ""),
                "evidence": {"listing": slug if public else None,
                             "version": version if public else None,
                             "unreleased": not public, "score": round(score, 4),
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



# -- the upload form ---------------------------------------------------------------------------
#: The values of ``attest_rights`` that attest (any letter case); anything else does not.
ATTEST_YES = frozenset({"true", "on", "1", "yes"})
TEXT_FIELDS = ("slug", "license", "attest_rights")


async def read_upload(
    request: Request, max_upload_mb: int, *, check: Callable[[FormData], None] | None = None
) -> Submission:
    """Read the multipart upload of a model, for the API and the seller's page alike.

    Parts: ``model`` (an .onnx file, or a zip/tar holding one with its external data and
    manifest), ``manifest`` (a file or text; an empty part counts as absent), ``license``,
    ``attest_rights`` (one of :data:`ATTEST_YES` attests), optional ``slug`` (a new version of
    that listing; surrounding spaces are dropped). ``check`` sees the form first (the page's
    CSRF check). Raises :class:`BadRequest`, :class:`InvalidInput` or
    :class:`PayloadTooLarge`; the form's files are closed either way."""
    limit = max_upload_mb * 1024 * 1024
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise BadRequest("send the upload with a Content-Length header", code="length_required")
    if int(length) > limit + 1_000_000:
        raise PayloadTooLarge(f"uploads are limited to {max_upload_mb} MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("send multipart/form-data with parts 'model' and 'manifest'",
                         code="multipart_required")
    form = await request.form(max_files=2, max_fields=8, max_part_size=512 * 1024)
    try:
        if check is not None:
            check(form)
        model, manifest = form.get("model"), form.get("manifest")
        if not isinstance(model, UploadFile) or not model.filename:
            raise InvalidInput("part 'model' (the .onnx file) is missing", code="missing_model")
        data = await model.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"models are limited to {max_upload_mb} MB")
        manifest_text: str | bytes | None
        if isinstance(manifest, UploadFile):
            manifest_text = await manifest.read() if manifest.filename else None
        else:
            manifest_text = manifest
        fields = {k: form.get(k) for k in TEXT_FIELDS}
    finally:
        await form.close()
    text = {k: v for k, v in fields.items() if isinstance(v, str)}
    if len(text) != sum(v is not None for v in fields.values()):
        raise InvalidInput("'slug', 'license' and 'attest_rights' are text fields",
                           code="invalid_field")
    return Submission(
        upload=data, manifest_text=manifest_text or None, license=text.get("license") or None,
        attested=text.get("attest_rights", "").lower() in ATTEST_YES,
        slug=text.get("slug", "").strip() or None,
    )


def publish_upload(svc: Any, seller: Account, sub: Submission) -> Published:
    """:func:`publish` in a session of its own (for a worker thread)."""
    with svc.sessions() as db:
        return publish(db, svc.settings, seller, sub, mark_key=edge.watermark_key(svc.signer))
