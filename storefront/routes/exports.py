"""Export licenses (purchase), signed bundles, the public key, and Nano Kit orders."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from metering import CallSpec, format_usd, to_micro
from serving import Conflict, InvalidInput, Manifest, NotFound

from .. import bundles, purchases
from .. import kit_orders as orders
from ..deps import Admin, Buyer, Id, ServicesDep, SessionDep
from ..models import KitOrder, Listing, ListingVersion
from ..purchases import cannot_pay as _cannot_pay
from ..purchases import undo as _undo

router = APIRouter(tags=["exports"])


@router.post("/v1/models/{slug}/purchase", status_code=201)
async def purchase(slug: str, buyer: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """Buy the export license of a listing from prepaid credit; the seller earns the price
    minus the platform fee in the same ledger as per-call revenue."""
    return await purchases.buy_licence(svc, buyer, slug)


class ExportRequest(BaseModel):
    slug: str = Field(max_length=80)
    version: Id | None = None
    target: Literal["onnx", "onnx-int8", "onnx-fp16", "nano-kit", "jetson-orin"]
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None, description="for targets that offer several (jetson-orin: fp16, the default, "
                          "or int8)")


@router.post("/v1/exports", status_code=201)
def create_export(body: ExportRequest, buyer: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """Build the signed bundle of a licensed listing; answers with the finished export (the
    site builds the same bundle in the background)."""
    return purchases.build_export(svc, buyer, body.slug, body.version, body.target,
                                  body.precision)


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


class Address(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    line1: str = Field(min_length=1, max_length=200)
    line2: str = Field("", max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")


class KitOrderRequest(BaseModel):
    export_id: str = Field(max_length=32)
    shipping_address: Address


@router.post("/v1/kit-orders", status_code=201)
async def order_kit(body: KitOrderRequest, buyer: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """Order a Nano Kit pre-loaded with a nano-kit export, charged the listing's
    ``pricing.kit_price`` from prepaid credit (one charge per kit; never free)."""
    def place() -> tuple[CallSpec, int]:
        with svc.sessions() as db:
            record, slug, _ = bundles.owned_export(db, body.export_id, buyer)
            if record.target != "nano-kit":
                raise InvalidInput("a Nano Kit is pre-loaded with a nano-kit export; create one "
                                   "with target 'nano-kit'", code="wrong_target")
            lv = db.get(ListingVersion, record.listing_version_id)
            listing = db.get(Listing, lv.listing_id) if lv is not None else None
            assert lv is not None and listing is not None
            kit_price = Manifest.model_validate_json(lv.manifest_json).pricing.kit_price
            if kit_price is None:
                raise Conflict(f"'{slug}' is not offered as a Nano Kit", code="kit_not_offered")
            now = datetime.now(UTC).isoformat()
            order = KitOrder(buyer_id=buyer.id, export_id=record.id, state="pending",
                             shipping_address=body.shipping_address.model_dump_json(),
                             history=json.dumps([{"state": "pending", "at": now}]))
            db.add(order)
            db.commit()
            price = to_micro(kit_price)
            return CallSpec(
                request_id=f"kit-{order.id}-{uuid.uuid4().hex[:8]}", account_id=buyer.id,
                api_key_id=None, listing_id=listing.id, listing_version_id=lv.id,
                seller_id=listing.seller_id, price=price, trial_calls=0, charge_kind="kit",
            ), order.id

    charge, oid = await run_in_threadpool(place)
    try:
        async with svc.meter.hold(charge, refuse=partial(_cannot_pay, charge.price, "a Nano Kit")
                                  ) as res:
            pass
    except BaseException:  # refused, or metering unavailable: no charge, so no order
        await run_in_threadpool(_undo, svc, KitOrder, oid)
        raise

    def read() -> dict[str, Any]:
        with svc.sessions() as db:
            order = db.get(KitOrder, oid)
            assert order is not None
            return orders.order_json(order)

    return {**await run_in_threadpool(read), "price": format_usd(charge.price),
            "credits": format_usd(res.credits_remaining)}


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
