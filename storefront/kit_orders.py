"""Nano Kit orders: placing one (a validated shipping address, the listing's
``pricing.kit_price`` charged from credit), their JSON view, and an admin moving them through
pending -> flashed -> shipped (with a tracking reference) -> delivered. For the API and the
buyer's and admin's pages alike; each move is kept in the order's history with the admin's
e-mail."""

from __future__ import annotations

import json
import unicodedata
import uuid
from datetime import UTC, datetime
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Literal

import pycountry
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from metering import CallSpec, format_usd, to_micro
from serving import Conflict, InvalidInput, Manifest, NotFound

from .bundles import owned_export
from .models import Account, Export, KitOrder, Listing, ListingVersion
from .purchases import cannot_pay, undo

if TYPE_CHECKING:
    from .services import Services

KIT_STATES = ("pending", "flashed", "shipped", "delivered")
# Bidirectional overrides and isolates: invisible, and they reorder what a label shows.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@cache
def countries() -> tuple[tuple[str, str], ...]:
    """(alpha-2 code, name) of every ISO 3166-1 country, by name (the page's select)."""
    return tuple(sorted(((c.alpha_2, c.name) for c in pycountry.countries),
                        key=lambda c: c[1]))


class Address(BaseModel):
    """A shipping address: each line stripped, no control characters; ``country`` an ISO
    3166-1 alpha-2 code (any case in, upper case kept)."""

    model_config = ConfigDict(str_strip_whitespace=True)
    name: str = Field(min_length=1, max_length=120)
    line1: str = Field(min_length=1, max_length=200)
    line2: str = Field("", max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")

    @field_validator("name", "line1", "line2", "city", "postal_code", "country")
    @classmethod
    def _printable(cls, v: str) -> str:
        if any(unicodedata.category(ch) == "Cc" or ch in _BIDI for ch in v):
            raise ValueError("must not contain control characters (line breaks, tabs, ...)")
        return v

    @field_validator("country")
    @classmethod
    def _iso_country(cls, v: str) -> str:
        code = v.upper()
        if not code.isascii() or not code.isalpha() or pycountry.countries.get(
                alpha_2=code) is None:
            raise ValueError(f"'{v}' is not an ISO 3166-1 alpha-2 country code (e.g. FR, US)")
        return code


class KitOrderRequest(BaseModel):
    export_id: str = Field(max_length=32)
    shipping_address: Address


class Advance(BaseModel):
    state: Literal["flashed", "shipped", "delivered"]
    tracking: str | None = Field(None, max_length=100)


def order_json(o: KitOrder) -> dict[str, Any]:
    return {"id": o.id, "export_id": o.export_id, "state": o.state, "tracking": o.tracking,
            "shipping_address": json.loads(o.shipping_address),
            "history": json.loads(o.history), "created_at": o.created_at.isoformat()}


def orders_of(db: Session, account: Account) -> list[dict[str, Any]]:
    """The account's own orders, newest first."""
    rows = db.execute(select(KitOrder).where(KitOrder.buyer_id == account.id)
                      .order_by(KitOrder.id.desc())).scalars()
    return [order_json(o) for o in rows]


def kit_price(lv: ListingVersion) -> int | None:
    """The version's ``pricing.kit_price`` in micro-USD; None when it offers no kit."""
    price = Manifest.model_validate_json(lv.manifest_json).pricing.kit_price
    return None if price is None else to_micro(price)


def kit_offers(db: Session, account: Account) -> dict[str, str]:
    """Export id -> kit price (USD) of each of the account's nano-kit bundles whose listing
    offers a kit: where the buyer dashboard shows the order form."""
    rows = db.execute(select(Export.id, ListingVersion)
                      .join(ListingVersion, ListingVersion.id == Export.listing_version_id)
                      .where(Export.buyer_id == account.id, Export.target == "nano-kit")).all()
    prices = {eid: kit_price(lv) for eid, lv in rows}
    return {eid: format_usd(p) for eid, p in prices.items() if p is not None}


def _pending_order(svc: Services, buyer: Account, export_id: str, address: Address
                   ) -> tuple[CallSpec, int]:
    """The order row (pending) and the charge for it; refused before anything is written."""
    with svc.sessions() as db:
        record, slug, _ = owned_export(db, export_id, buyer)
        if record.buyer_id != buyer.id:  # an admin may read a buyer's bundle, not order on it
            raise NotFound(f"no export '{export_id}'", code="export_not_found")
        if record.target != "nano-kit":
            raise InvalidInput("a Nano Kit is pre-loaded with a nano-kit export; create one "
                               "with target 'nano-kit'", code="wrong_target")
        lv = db.get(ListingVersion, record.listing_version_id)
        listing = db.get(Listing, lv.listing_id) if lv is not None else None
        assert lv is not None and listing is not None
        price = kit_price(lv)
        if price is None:
            raise Conflict(f"'{slug}' is not offered as a Nano Kit", code="kit_not_offered")
        now = datetime.now(UTC).isoformat()
        order = KitOrder(buyer_id=buyer.id, export_id=record.id, state="pending",
                         shipping_address=address.model_dump_json(),
                         history=json.dumps([{"state": "pending", "at": now}]))
        db.add(order)
        db.commit()
        return CallSpec(
            request_id=f"kit-{order.id}-{uuid.uuid4().hex[:8]}", account_id=buyer.id,
            api_key_id=None, listing_id=listing.id, listing_version_id=lv.id,
            seller_id=listing.seller_id, price=price, trial_calls=0, charge_kind="kit",
        ), order.id


def _read(svc: Services, order_id: int) -> dict[str, Any]:
    with svc.sessions() as db:
        order = db.get(KitOrder, order_id)
        assert order is not None
        return order_json(order)


async def place_order(svc: Services, buyer: Account, export_id: str, address: Address
                      ) -> dict[str, Any]:
    """Order a Nano Kit pre-loaded with the buyer's nano-kit bundle ``export_id``, charged the
    listing's ``pricing.kit_price`` from prepaid credit (one charge per kit; never free). A
    refused or failed charge leaves no order."""
    charge, oid = await run_in_threadpool(_pending_order, svc, buyer, export_id, address)
    try:
        refuse = partial(cannot_pay, charge.price, "a Nano Kit")
        async with svc.meter.hold(charge, refuse=refuse) as res:
            pass
    except BaseException:  # refused, or metering unavailable: no charge, so no order
        await run_in_threadpool(undo, svc, KitOrder, oid)
        raise
    return {**await run_in_threadpool(_read, svc, oid), "price": format_usd(charge.price),
            "credits": format_usd(res.credits_remaining)}


def next_state(state: str) -> str | None:
    """The one state an order in ``state`` may move to (None once delivered)."""
    i = KIT_STATES.index(state)
    return KIT_STATES[i + 1] if i + 1 < len(KIT_STATES) else None


def open_orders(db: Session) -> list[dict[str, Any]]:
    """Every order not yet delivered, oldest first (the admin's work list)."""
    rows = db.execute(select(KitOrder).where(KitOrder.state != "delivered")
                      .order_by(KitOrder.id)).scalars()
    return [{**order_json(o), "next": next_state(o.state)} for o in rows]


def advance(db: Session, admin: Account, order_id: int, body: Advance) -> dict[str, Any]:
    order = db.get(KitOrder, order_id)
    if order is None:
        raise NotFound(f"no kit order {order_id}", code="kit_order_not_found")
    expected = next_state(order.state)
    if body.state != expected:
        raise Conflict(f"order {order_id} is {order.state}; it can only move to "
                       f"{expected or 'nothing (delivered)'}", code="invalid_transition")
    tracking = (body.tracking or "").strip() or None
    if body.state == "shipped" and not tracking:
        raise InvalidInput("shipping needs a tracking reference", code="tracking_required")
    order.state = body.state
    if tracking:
        order.tracking = tracking
    order.history = json.dumps([*json.loads(order.history), {
        "state": body.state, "at": datetime.now(UTC).isoformat(), "by": admin.email,
        **({"tracking": tracking} if tracking else {})}])
    db.commit()
    return order_json(order)
