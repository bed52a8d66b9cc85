"""Export licences and bundles: buying a listing's export licence (from credits, or by card
through Stripe Checkout, granted by the webhook) and building a signed bundle. The API's
routes, the model page and the background builds of the site all call these functions."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from export import PRECISIONS, TARGETS, build, precision_for
from metering import CallSpec, Reservation, format_usd
from serving import Conflict, Forbidden, InvalidInput, Manifest, NotFound, PaymentRequired

from . import bundles, edge
from .models import Account, Export, Listing, ListingVersion, Purchase
from .registry import live_row, model_path

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)


def live_listing(db: Session, slug: str, version: int | None = None
                 ) -> tuple[Listing, ListingVersion]:
    row = live_row(db, slug, version)
    if row is None:
        what = f"'{slug}' version {version}" if version is not None else f"'{slug}'"
        raise NotFound(f"no live model {what}",
                       code="model_not_found" if version is None else "version_not_found")
    return row


def licence_of(db: Session, buyer: Account, listing_id: int) -> Purchase | None:
    """The buyer's export licence of a listing, or None."""
    return db.execute(select(Purchase).where(Purchase.buyer_id == buyer.id,
                                             Purchase.listing_id == listing_id)
                      ).scalar_one_or_none()


def cannot_pay(price: int, what: str, res: Reservation) -> PaymentRequired:
    return PaymentRequired(
        f"{what} costs {format_usd(price)} USD and your credits are "
        f"{format_usd(res.credits_remaining)} USD", code="insufficient_credits",
        details={"price": format_usd(price), "credits": format_usd(res.credits_remaining)})


def undo(svc: Services, model: type[Any], pk: Any) -> None:
    """Delete the row (a licence, a kit order) a charge was for: the charge was refused or
    failed, so nothing was bought."""
    with svc.sessions() as db:
        row = db.get(model, pk)
        if row is not None:
            db.delete(row)
            db.commit()


def _offered(db: Session, buyer: Account, slug: str) -> tuple[Listing, ListingVersion, int]:
    """The listing, its live version and the licence's price; 409 when the buyer holds the
    licence already or the listing offers no export."""
    listing, lv = live_listing(db, slug)
    owned = licence_of(db, buyer, listing.id)
    if owned is not None:
        raise Conflict(f"you already hold the export license of '{slug}'",
                       code="already_purchased", details={"purchase_id": owned.id})
    if lv.export_price is None:
        raise Conflict(f"'{slug}' is not offered for export", code="not_exportable")
    return listing, lv, lv.export_price


async def buy_licence(svc: Services, buyer: Account, slug: str) -> dict[str, Any]:
    """Buy the export license of a listing from prepaid credit; the seller earns the price
    minus the platform fee in the same ledger as per-call revenue."""
    def claim() -> tuple[Listing, ListingVersion, int, str]:
        with svc.sessions() as db:
            listing, lv, price = _offered(db, buyer, slug)
            pid = uuid.uuid4().hex
            # The license row comes first: its unique (buyer, listing) makes concurrent
            # purchases of one license collide here, before anything is charged.
            db.add(Purchase(id=pid, buyer_id=buyer.id, listing_id=listing.id, price=price))
            try:
                db.commit()
            except IntegrityError as exc:
                db.rollback()
                raise Conflict(f"you already hold the export license of '{slug}'",
                               code="already_purchased") from exc
            return listing, lv, price, pid

    listing, lv, price, pid = await run_in_threadpool(claim)
    # The charge is a hold like a paid call's: committed as one usage event of kind export
    # (the seller's share in the same ledger), released if anything fails.
    charge = CallSpec(
        request_id=f"purchase-{pid}", account_id=buyer.id, api_key_id=None,
        listing_id=listing.id, listing_version_id=lv.id, seller_id=listing.seller_id,
        price=price, trial_calls=0, charge_kind="export",
    )
    try:
        async with svc.meter.hold(charge, refuse=partial(cannot_pay, price,
                                                         "the export license")) as res:
            pass
    except BaseException:  # refused, or metering unavailable: no charge, so no license
        await run_in_threadpool(undo, svc, Purchase, pid)
        raise
    return {"purchase_id": pid, "slug": slug, "price": format_usd(price),
            "credits": format_usd(res.credits_remaining)}


def licence_checkout(svc: Services, buyer: Account, slug: str) -> dict[str, Any]:
    """Stripe mode: a Checkout Session paying the export licence by card. The webhook adds
    the payment to the buyer's credits and buys the licence from them (``licence_paid``), so
    the seller's share lands in the ledger exactly as for a purchase from credits."""
    with svc.sessions() as db:
        listing, _, price = _offered(db, buyer, slug)
    return svc.billing.checkout_item(
        buyer.id, buyer.email, price, purpose="licence", item=slug,
        product=f"aimarket export licence: {listing.title}"[:200],
        return_path=f"/models/{slug}")


async def licence_paid(svc: Services, account_id: int, slug: str, checkout_id: str) -> None:
    """The webhook's side of ``licence_checkout``, after the payment was credited (once per
    Checkout Session): buy the licence. A replayed webhook, or a buyer who bought it from
    credits meanwhile, finds the licence held: nothing more is charged or granted, and the
    payment stays in the buyer's credits."""
    def find() -> Account | None:
        with svc.sessions() as db:
            account = db.get(Account, account_id)
            if account is not None:
                db.expunge(account)
            return account

    buyer = await run_in_threadpool(find)
    if buyer is None:
        log.error("checkout %s paid a licence for account %s, which is gone", checkout_id,
                  account_id)
        return
    try:
        await buy_licence(svc, buyer, slug)
    except (Conflict, NotFound, PaymentRequired) as exc:
        log.warning("checkout %s: the licence of %s was not bought (%s); the payment stays "
                    "in the credits of account %s", checkout_id, slug, exc.code, account_id)


def target_choices(export_compat: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """What the model page's target picker offers: every target and precision the export
    package defines, each marked with whether the compatibility table found it exportable."""
    rows = {r["target"]: r for r in export_compat or []}
    out = []
    for target in TARGETS:
        row = rows.get(target)
        for precision in PRECISIONS[target]:
            ok = row is None or precision in row.get("results", {})
            out.append({"value": f"{target}:{precision}", "label": f"{target} ({precision})",
                        "ok": ok})
    return out


def parse_choice(value: str) -> tuple[str, str | None]:
    """``target:precision`` from the picker (or a bare target) -> (target, precision)."""
    target, _, precision = value.partition(":")
    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}",
                           code="unknown_target")
    precision_for(target, precision or None)  # precision_unsupported when not offered
    return target, precision or None


def build_export(svc: Services, buyer: Account, slug: str, version: int | None, target: str,
                 precision: str | None) -> dict[str, Any]:
    """Build, sign and store the buyer's bundle of a licensed listing (synchronous: the API
    answers with it, the site runs it in the background); its export JSON."""
    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}",
                           code="unknown_target")
    with svc.sessions() as db:
        listing, lv = live_listing(db, slug, version)
        license_ = licence_of(db, buyer, listing.id)
        if license_ is None:
            raise Forbidden(f"buy the export license first: POST /v1/models/{slug}/purchase",
                            code="no_license")
        eid, license_id = uuid.uuid4().hex, uuid.uuid4().hex
        info = {"license_id": license_id, "licensee": buyer.email, "listing": listing.slug,
                "version": lv.version, "seller": listing.seller_id,
                "terms": lv.license or "see seller",
                "issued_at": datetime.now(UTC).isoformat(), "purchase_id": license_.id}
        manifest = Manifest.model_validate_json(lv.manifest_json)
        data_dir = svc.settings.data_dir
        bundle = build(model_path(data_dir, lv.model_sha256).read_bytes(), manifest, target,
                       info, svc.signer, precision=precision,
                       calibration=edge.calibration_for(data_dir, listing.id, manifest),
                       watermark_key=edge.watermark_key(svc.signer))
        path = bundles.bundle_path(data_dir, eid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.data)
        record = Export(id=eid, buyer_id=buyer.id, listing_version_id=lv.id,
                        purchase_id=license_.id, target=target, license_id=license_id,
                        sha256=bundle.sha256, size_bytes=len(bundle.data),
                        agreement=bundle.agreement, max_diff=bundle.max_diff,
                        precision=bundle.precision, watermarked=bundle.watermarked)
        db.add(record)
        db.commit()
        return {**bundles.export_json(record, listing.slug, lv.version), "notes": bundle.notes}
