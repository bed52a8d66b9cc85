"""Edge delivery services: the watermark key, the seller's calibration inputs, tracing a leaked
model back to its licence, and the export compatibility table (cached per model digest)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx
from sqlalchemy import select
from sqlalchemy.orm import Session

from export import Signer, calibration, compat, watermark
from serving import InvalidInput, Manifest

from .models import Account, Export, Listing, ListingVersion
from .registry import live_row, model_path

log = logging.getLogger(__name__)


def watermark_key(signer: Signer) -> bytes:
    """The key of every licence's watermark pattern (derived from the export signing key)."""
    return signer.derived_key("aimarket watermark")


def calibration_path(data_dir: Path, listing_id: int) -> Path:
    return data_dir / "calibration" / f"{listing_id}.npz"


def uploaded_calibration(data_dir: Path, listing_id: int) -> list[dict[str, Any]]:
    path = calibration_path(data_dir, listing_id)
    return calibration.load(path.read_bytes()) if path.exists() else []


def calibration_for(data_dir: Path, listing_id: int, manifest: Manifest
                    ) -> calibration.Calibration:
    """What an int8 export of the listing is calibrated on."""
    return calibration.choose(manifest, uploaded_calibration(data_dir, listing_id))


def save_calibration(data_dir: Path, listing_id: int, items: list[dict[str, Any]]) -> int:
    """Keep the seller's calibration inputs (replacing earlier ones); how many were kept."""
    items = items[:calibration.MAX_ITEMS]
    path = calibration_path(data_dir, listing_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(calibration.save(items))
    tmp.replace(path)
    return len(items)


def parse_model(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidInput("not an ONNX model file", code="invalid_model") from exc
    if not model.graph.node:
        raise InvalidInput("the ONNX model has no graph", code="invalid_model")
    return model


def find_mark(db: Session, data_dir: Path, key: bytes, suspect: bytes,
              listing_ids: set[int] | None = None) -> dict[str, Any] | None:
    """The licence whose mark ``suspect`` carries, among the watermarked exports (of
    ``listing_ids`` only, when given): licence id, licensee, listing, z and confidence."""
    query = (select(ListingVersion, Listing)
             .join(Listing, Listing.id == ListingVersion.listing_id)
             .where(ListingVersion.id.in_(select(Export.listing_version_id)
                                          .where(Export.watermarked.is_(True)))))
    if listing_ids is not None:
        query = query.where(Listing.id.in_(listing_ids))
    candidates, best = 0, None
    for lv, listing in db.execute(query).all():
        path = model_path(data_dir, lv.model_sha256)
        if not path.exists():
            continue
        licences = db.execute(
            select(Export.license_id, Account.email)
            .join(Account, Account.id == Export.buyer_id)
            .where(Export.listing_version_id == lv.id, Export.watermarked.is_(True))
        ).all()
        candidates += len(licences) * watermark.VARIANTS
        found = watermark.detect(path.read_bytes(), suspect, key, [lid for lid, _ in licences])
        if found is not None and (best is None or found.z > best[0].z):
            best = (found, dict(licences)[found.license_id], listing)
    if best is None:
        return None
    found, licensee, listing = best
    return {"license_id": found.license_id, "licensee": licensee, "listing": listing,
            "z": found.z, "confidence": watermark.confidence(found.z, candidates)}


def trace(db: Session, data_dir: Path, key: bytes, suspect: bytes,
          account: Account) -> dict[str, Any]:
    """Which licence a model file carries the mark of. Only an admin or the seller of the
    matched listing learns the match; anyone else (and any unmarked or foreign model) gets
    ``traced: false``."""
    parse_model(suspect)
    best = find_mark(db, data_dir, key, suspect)
    untraced = {"traced": False, "license_id": None, "licensee": None, "listing": None,
                "confidence": 0.0, "score": None}
    if best is None:
        return untraced
    listing = best["listing"]
    if account.role != "admin" and listing.seller_id != account.id:
        return untraced
    return {"traced": True, "license_id": best["license_id"], "licensee": best["licensee"],
            "listing": listing.slug, "confidence": best["confidence"],
            "score": round(best["z"], 2)}


def compatibility(data_dir: Path, lv: ListingVersion, listing_id: int) -> list[dict[str, Any]]:
    """The export compatibility table of a live version, measured once per model digest."""
    cache = data_dir / "compat" / f"{lv.model_sha256}.json"
    if cache.exists():
        rows: list[dict[str, Any]] = json.loads(cache.read_text())
        return rows
    manifest = Manifest.model_validate_json(lv.manifest_json)
    rows = compat.table(model_path(data_dir, lv.model_sha256).read_bytes(), manifest,
                        uploaded_calibration(data_dir, listing_id))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(cache)
    return rows


def page_table(svc: Any, slug: str) -> list[dict[str, Any]] | None:
    """The compatibility table for the model page; None when it cannot be measured (the page
    then says so instead of failing)."""
    try:
        with svc.sessions() as db:
            row = live_row(db, slug)
            if row is None:
                return None
            return compatibility(svc.settings.data_dir, row[1], row[0].id)
    except Exception:  # a model the converters choke on must not take its page down
        log.exception("export compatibility of %s could not be measured", slug)
        return None


def forget_compatibility(data_dir: Path, lv: ListingVersion) -> None:
    """New calibration inputs change the int8 figures: measure again on the next request."""
    (data_dir / "compat" / f"{lv.model_sha256}.json").unlink(missing_ok=True)
