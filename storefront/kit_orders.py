"""Nano Kit orders after they are placed: their JSON view and an admin moving them through
pending -> flashed -> shipped (with a tracking reference) -> delivered. For the API and the
admin page alike; each move is kept in the order's history with the admin's e-mail."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from serving import Conflict, InvalidInput, NotFound

from .models import Account, KitOrder

KIT_STATES = ("pending", "flashed", "shipped", "delivered")


class Advance(BaseModel):
    state: Literal["flashed", "shipped", "delivered"]
    tracking: str | None = Field(None, max_length=100)


def order_json(o: KitOrder) -> dict[str, Any]:
    return {"id": o.id, "export_id": o.export_id, "state": o.state, "tracking": o.tracking,
            "shipping_address": json.loads(o.shipping_address),
            "history": json.loads(o.history), "created_at": o.created_at.isoformat()}


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
