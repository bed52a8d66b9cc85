"""Pay per call at the edge: a kit's signed usage receipts (export/receipts.py), verified
against the export's chain and charged to the buyer once.

``POST /v1/edge-usage {license_id, receipts: [...]}``: the batch must continue the export's
chain exactly (next sequence number, previous hash, cumulative counter) and every receipt must
carry the export's own signature; anything else is refused whole with a 4xx naming the first
bad receipt. Accepted receipts are stored first (``(export, seq)`` is unique, so a concurrent
or repeated batch collides before anything is charged), then the calls are charged as one
usage event of kind ``edge`` through the meter's hold, like an export purchase: price = calls x
``pricing.per_edge_call``, seller share + platform fee exact. A refused charge (no credit)
removes the stored receipts again: the kit sends them later.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from export import receipts
from metering import CallSpec, Reservation, format_usd, to_micro
from serving import Conflict, InvalidInput, Manifest, NotFound, PaymentRequired

from .models import EdgeReceipt, Export, Listing, ListingVersion
from .services import Services

MAX_RECEIPTS = 1000  # per request
MAX_AMOUNT = 2**53  # micro-units one charge may hold (exact in Redis' Lua numbers)


def _refusal(exc: receipts.Refused, head: int) -> InvalidInput | Conflict:
    details = {"seq": exc.seq, "chain_head": head, "expected_seq": head + 1}
    if exc.code == "receipt_forged":
        return InvalidInput(exc.message, code=exc.code, details=details)
    return Conflict(exc.message, code=exc.code, details=details)


def _record(svc: Services, license_id: str, batch: list[Any]) -> dict[str, Any]:
    """Verify the batch against the export's chain and store it; what to charge."""
    with svc.sessions() as db:
        row = db.execute(
            select(Export, ListingVersion, Listing)
            .join(ListingVersion, ListingVersion.id == Export.listing_version_id)
            .join(Listing, Listing.id == ListingVersion.listing_id)
            .where(Export.license_id == license_id)
        ).first()
        if row is None:
            raise NotFound(f"no export with licence '{license_id}'", code="export_not_found")
        export, lv, listing = row
        unit = Manifest.model_validate_json(lv.manifest_json).pricing.per_edge_call
        if unit is None:
            raise Conflict(f"'{listing.slug}' is not priced per edge call",
                           code="edge_not_offered")
        head = db.execute(select(EdgeReceipt).where(EdgeReceipt.export_id == export.id)
                          .order_by(EdgeReceipt.seq.desc()).limit(1)).scalar_one_or_none()
        seq = head.seq if head else 0
        try:
            calls = receipts.check(svc.signer.edge_key(license_id).public_key(), license_id,
                                   batch, seq, head.hash if head else receipts.genesis(license_id),
                                   head.counter if head else 0)
        except receipts.Refused as exc:
            raise _refusal(exc, seq) from None
        if to_micro(unit) * calls > MAX_AMOUNT:
            raise InvalidInput(f"{calls} edge calls in one batch are more than one charge may "
                               "hold; sync more often", code="invalid_input")
        first, last = batch[0]["seq"], batch[-1]["seq"]
        event_id = f"edge-{export.id}-{first}-{last}"
        db.add_all([EdgeReceipt(
            export_id=export.id, seq=r["seq"], calls=r["calls"], counter=r["counter"],
            period_start=r["period_start"], period_end=r["period_end"],
            prev_hash=r["prev"], hash=r["hash"], signature=r["signature"],
            event_id=event_id) for r in batch])
        try:
            db.commit()
        except IntegrityError as exc:  # a concurrent batch took these sequence numbers
            db.rollback()
            raise Conflict(f"receipts {first}..{last} were accepted meanwhile; send only "
                           "newer receipts", code="receipt_replayed",
                           details={"seq": first}) from exc
        return {"export_id": export.id, "buyer_id": export.buyer_id, "listing_id": listing.id,
                "version_id": lv.id, "seller_id": listing.seller_id, "event_id": event_id,
                "calls": calls, "amount": to_micro(unit) * calls, "unit": to_micro(unit),
                "first": first, "last": last, "counter": batch[-1]["counter"],
                "hash": batch[-1]["hash"], "slug": listing.slug}


def _forget(svc: Services, export_id: str, first: int, last: int) -> None:
    with svc.sessions() as db:
        db.execute(delete(EdgeReceipt).where(EdgeReceipt.export_id == export_id,
                                             EdgeReceipt.seq >= first, EdgeReceipt.seq <= last))
        db.commit()


def _cannot_pay(amount: int, calls: int, res: Reservation) -> PaymentRequired:
    return PaymentRequired(
        f"{calls} edge calls cost {format_usd(amount)} USD and your credits are "
        f"{format_usd(res.credits_remaining)} USD; the receipts were not accepted: add credit "
        "and sync again", code="insufficient_credits",
        details={"price": format_usd(amount), "credits": format_usd(res.credits_remaining)})


async def submit(svc: Services, body: Any) -> dict[str, Any]:
    """Accept and charge one batch of a kit's receipts (see the module's docstring)."""
    if not isinstance(body, dict) or not isinstance(body.get("license_id"), str):
        raise InvalidInput("send {\"license_id\", \"receipts\": [...]}", code="invalid_input")
    batch = body.get("receipts")
    if not isinstance(batch, list) or not batch or not all(isinstance(r, dict) for r in batch):
        raise InvalidInput("'receipts' is a non-empty list of receipts (usage/receipts/*.json "
                           "of the kit's bundle folder)", code="invalid_input")
    if len(batch) > MAX_RECEIPTS:
        raise InvalidInput(f"at most {MAX_RECEIPTS} receipts per request", code="invalid_input")
    got = await run_in_threadpool(_record, svc, body["license_id"], batch)
    charge = CallSpec(
        request_id=got["event_id"], account_id=got["buyer_id"], api_key_id=None,
        listing_id=got["listing_id"], listing_version_id=got["version_id"],
        seller_id=got["seller_id"], price=got["amount"], trial_calls=0, charge_kind="edge")
    try:
        refuse = partial(_cannot_pay, got["amount"], got["calls"])
        async with svc.meter.hold(charge, refuse=refuse) as res:
            pass
    except BaseException:  # refused, or metering unavailable: nothing charged, nothing kept
        await run_in_threadpool(_forget, svc, got["export_id"], got["first"], got["last"])
        raise
    return {"license_id": body["license_id"], "listing": got["slug"],
            "accepted": got["last"] - got["first"] + 1, "calls": got["calls"],
            "price_per_call": format_usd(got["unit"]), "charged": format_usd(got["amount"]),
            "usage_event": got["event_id"], "credits": format_usd(res.credits_remaining),
            "chain": {"seq": got["last"], "hash": got["hash"], "counter": got["counter"]}}


def chain(svc: Services, license_id: str, account: Any) -> dict[str, Any]:
    """An export's receipt chain as its buyer, its listing's seller or an admin sees it: how
    far it got, when it last moved, what it billed."""
    with svc.sessions() as db:
        row = db.execute(
            select(Export, Listing)
            .join(ListingVersion, ListingVersion.id == Export.listing_version_id)
            .join(Listing, Listing.id == ListingVersion.listing_id)
            .where(Export.license_id == license_id)
        ).first()
        if row is None or (account.role != "admin" and account.id not in
                           (row[0].buyer_id, row[1].seller_id)):
            raise NotFound(f"no export with licence '{license_id}'", code="export_not_found")
        rows = db.execute(select(EdgeReceipt).where(EdgeReceipt.export_id == row[0].id)
                          .order_by(EdgeReceipt.seq)).scalars().all()
        last = rows[-1] if rows else None
        return {"license_id": license_id, "listing": row[1].slug, "receipts": len(rows),
                "seq": last.seq if last else 0, "counter": last.counter if last else 0,
                "last_period_end": last.period_end if last else None,
                "last_received_at": last.received_at.isoformat() if last else None}
