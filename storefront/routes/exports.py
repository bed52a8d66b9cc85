"""Export licenses (purchase), signed bundles, the public key, and Nano Kit orders."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from export import build
from metering import CallSpec, Reservation, format_usd
from serving import Conflict, Forbidden, Manifest, NotFound, PaymentRequired

from .. import bundles, edge
from .. import kit_orders as orders
from ..deps import Admin, Buyer, Id, ServicesDep, SessionDep
from ..models import Export, KitOrder, Listing, ListingVersion, Purchase
from ..registry import live_row, model_path

router = APIRouter(tags=["exports"])


def _listing(db: Any, slug: str, version: int | None = None
             ) -> tuple[Listing, ListingVersion]:
    row = live_row(db, slug, version)
    if row is None:
        what = f"'{slug}' version {version}" if version is not None else f"'{slug}'"
        raise NotFound(f"no live model {what}",
                       code="model_not_found" if version is None else "version_not_found")
    return row


@router.post("/v1/models/{slug}/purchase", status_code=201)
async def purchase(slug: str, buyer: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """Buy the export license of a listing from prepaid credit; the seller earns the price
    minus the platform fee in the same ledger as per-call revenue."""
    with svc.sessions() as db:
        listing, lv = await run_in_threadpool(_listing, db, slug)
        owned = db.execute(select(Purchase).where(Purchase.buyer_id == buyer.id,
                                                  Purchase.listing_id == listing.id)
                           ).scalar_one_or_none()
        if owned is not None:
            raise Conflict(f"you already hold the export license of '{slug}'",
                           code="already_purchased", details={"purchase_id": owned.id})
        if lv.export_price is None:
            raise Conflict(f"'{slug}' is not offered for export", code="not_exportable")
        price = lv.export_price
        pid = uuid.uuid4().hex
        # The license row comes first: its unique (buyer, listing) makes concurrent purchases
        # of one license collide here, before anything is charged.
        db.add(Purchase(id=pid, buyer_id=buyer.id, listing_id=listing.id, price=price))
        try:
            await run_in_threadpool(db.commit)
        except IntegrityError as exc:
            db.rollback()
            raise Conflict(f"you already hold the export license of '{slug}'",
                           code="already_purchased") from exc

        # The charge is a hold like a paid call's: committed as one usage event of kind
        # export (the seller's share in the same ledger), released if anything fails.
        charge = CallSpec(
            request_id=f"purchase-{pid}", account_id=buyer.id, api_key_id=None,
            listing_id=listing.id, listing_version_id=lv.id, seller_id=listing.seller_id,
            price=price, trial_calls=0, charge_kind="export",
        )
        try:
            refuse = partial(_cannot_pay, price, "the export license")
            async with svc.meter.hold(charge, refuse=refuse) as res:
                pass
        except BaseException:  # refused, or metering unavailable: no charge, so no license
            await run_in_threadpool(_undo, svc, Purchase, pid)
            raise
        balance = res.credits_remaining
    return {"purchase_id": pid, "slug": slug, "price": format_usd(price),
            "credits": format_usd(balance)}


def _cannot_pay(price: int, what: str, res: Reservation) -> PaymentRequired:
    return PaymentRequired(
        f"{what} costs {format_usd(price)} USD and your credits are "
        f"{format_usd(res.credits_remaining)} USD", code="insufficient_credits",
        details={"price": format_usd(price), "credits": format_usd(res.credits_remaining)})


def _undo(svc: Any, model: type[Purchase] | type[KitOrder], pk: str | int) -> None:
    """Delete the row a charge was for: the charge was refused or failed."""
    with svc.sessions() as db:
        row = db.get(model, pk)
        if row is not None:
            db.delete(row)
            db.commit()


class ExportRequest(BaseModel):
    slug: str = Field(max_length=80)
    version: Id | None = None
    target: Literal["onnx", "onnx-int8", "onnx-fp16", "nano-kit", "jetson-orin"]
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None, description="for targets that offer several (jetson-orin: fp16, the default, "
                          "or int8)")


@router.post("/v1/exports", status_code=201)
def create_export(body: ExportRequest, buyer: Buyer, db: SessionDep,
                  svc: ServicesDep) -> dict[str, Any]:
    listing, lv = _listing(db, body.slug, body.version)
    license_ = db.execute(select(Purchase).where(Purchase.buyer_id == buyer.id,
                                                 Purchase.listing_id == listing.id)
                          ).scalar_one_or_none()
    if license_ is None:
        raise Forbidden(f"buy the export license first: POST /v1/models/{body.slug}/purchase",
                        code="no_license")
    eid, license_id = uuid.uuid4().hex, uuid.uuid4().hex
    info = {"license_id": license_id, "licensee": buyer.email, "listing": listing.slug,
            "version": lv.version, "seller": listing.seller_id, "terms": lv.license or "see seller",
            "issued_at": datetime.now(UTC).isoformat(), "purchase_id": license_.id}
    manifest = Manifest.model_validate_json(lv.manifest_json)
    bundle = build(model_path(svc.settings.data_dir, lv.model_sha256).read_bytes(),
                   manifest, body.target, info, svc.signer, precision=body.precision,
                   calibration=edge.calibration_for(svc.settings.data_dir, listing.id, manifest),
                   watermark_key=edge.watermark_key(svc.signer))
    path = bundles.bundle_path(svc.settings.data_dir, eid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bundle.data)
    record = Export(id=eid, buyer_id=buyer.id, listing_version_id=lv.id, purchase_id=license_.id,
                    target=body.target, license_id=license_id, sha256=bundle.sha256,
                    size_bytes=len(bundle.data), agreement=bundle.agreement,
                    max_diff=bundle.max_diff, precision=bundle.precision,
                    watermarked=bundle.watermarked)
    db.add(record)
    db.commit()
    return {**bundles.export_json(record, listing.slug, lv.version), "notes": bundle.notes}


@router.get("/v1/exports/public-key")
def public_key(svc: ServicesDep) -> dict[str, str]:
    """The key that signs every bundle's license.json (Ed25519, PEM)."""
    return {"algorithm": "Ed25519", "public_key_pem": svc.signer.public_pem()}


@router.get("/v1/exports")
def my_exports(buyer: Buyer, db: SessionDep) -> dict[str, Any]:
    return {"items": bundles.exports_of(db, buyer)}


@router.get("/v1/exports/{export_id}")
def get_export(export_id: str, buyer: Buyer, db: SessionDep) -> dict[str, Any]:
    return bundles.export_json(*bundles.owned_export(db, export_id, buyer))


@router.get("/v1/exports/{export_id}/download")
def download(export_id: str, buyer: Buyer, db: SessionDep, svc: ServicesDep) -> FileResponse:
    record, slug, version = bundles.owned_export(db, export_id, buyer)
    return FileResponse(bundles.bundle_path(svc.settings.data_dir, record.id),
                        media_type="application/zip",
                        filename=f"{slug}-v{version}-{record.target}.zip")


@router.post("/v1/kit-orders", status_code=201)
async def order_kit(body: orders.KitOrderRequest, buyer: Buyer, svc: ServicesDep
                    ) -> dict[str, Any]:
    """Order a Nano Kit pre-loaded with a nano-kit export, charged the listing's
    ``pricing.kit_price`` from prepaid credit (one charge per kit; never free)."""
    return await orders.place_order(svc, buyer, body.export_id, body.shipping_address)


@router.get("/v1/kit-orders")
def kit_orders(buyer: Buyer, db: SessionDep) -> dict[str, Any]:
    q = select(KitOrder).order_by(KitOrder.id.desc())
    if buyer.role != "admin":
        q = q.where(KitOrder.buyer_id == buyer.id)
    return {"items": [orders.order_json(o) for o in db.execute(q).scalars()]}


@router.get("/v1/kit-orders/{order_id}")
def kit_order(order_id: Id, buyer: Buyer, db: SessionDep) -> dict[str, Any]:
    order = db.get(KitOrder, order_id)
    if order is None or (order.buyer_id != buyer.id and buyer.role != "admin"):
        raise NotFound(f"no kit order {order_id}", code="kit_order_not_found")
    return orders.order_json(order)


@router.post("/v1/admin/kit-orders/{order_id}/advance")
def advance(order_id: Id, body: orders.Advance, admin: Admin, db: SessionDep
            ) -> dict[str, Any]:
    return orders.advance(db, admin, order_id, body)
