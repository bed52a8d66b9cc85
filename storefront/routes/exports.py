"""Export licenses (purchase), signed bundles, the public key, and Nano Kit orders."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.responses import FileResponse

from serving import NotFound

from .. import bundles, purchases
from .. import kit_orders as orders
from ..deps import Admin, Buyer, Id, ServicesDep, SessionDep
from ..models import KitOrder

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
