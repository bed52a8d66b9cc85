"""Seller payouts: a Transfer per seller and period, from the ledger's seller shares.

A payout pays whole cents of what the seller is owed at the period's end (all shares up to
then, less every earlier payout); the sub-cent rest carries into the next period, so over time
sellers receive their shares exactly. The row is written before Stripe is called and its id
keys the transfer, so a rerun — after Stripe failed, or after a reply was lost — never pays twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metering import UsageEvent, utcnow
from serving import InvalidInput

from .stripe_api import MICRO_PER_CENT, StripeGateway
from .tables import BillingProfile, Payout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PayoutResult:
    seller_id: int
    period: str
    earned: int
    amount: int
    status: str  # paid | pending (retry later) | nothing | not_onboarded
    transfer_id: str | None = None
    error: str = ""


def period_bounds(period: str) -> tuple[datetime, datetime]:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", period):
        raise InvalidInput(f"period must be YYYY-MM, not {period!r}", code="invalid_period")
    year, month = map(int, period.split("-"))
    if not 2000 <= year <= 2999:
        raise InvalidInput(f"period {period} is out of range", code="invalid_period")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _owed(db: Session, seller_id: int, start: datetime, end: datetime, period: str
          ) -> tuple[int, int]:
    """(earned in the period, owed at its end in whole cents as micro-units)."""
    def shares(*where: ColumnElement[bool]) -> int:
        return int(db.execute(select(func.coalesce(func.sum(UsageEvent.seller_share), 0))
                              .where(UsageEvent.seller_id == seller_id, *where)).scalar_one())

    earned = shares(UsageEvent.created_at >= start, UsageEvent.created_at < end)
    to_date = shares(UsageEvent.created_at < end)
    paid_before = int(db.execute(select(func.coalesce(func.sum(Payout.amount), 0)).where(
        Payout.seller_id == seller_id, Payout.period < period)).scalar_one())
    owed = max(0, to_date - paid_before)
    return earned, owed - owed % MICRO_PER_CENT


def _prepare(engine: Engine, period: str) -> list[int]:
    """Write this period's payout row for every seller with shares (once)."""
    start, end = period_bounds(period)
    with Session(engine) as db:
        sellers = list(db.execute(select(UsageEvent.seller_id).where(
            UsageEvent.created_at < end, UsageEvent.seller_share > 0).distinct()).scalars())
        for seller_id in sellers:
            if db.execute(select(Payout.id).where(Payout.seller_id == seller_id,
                                                  Payout.period >= period)).first():
                continue  # paid for this period, or a later one already covered it
            earned, amount = _owed(db, seller_id, start, end, period)
            db.add(Payout(seller_id=seller_id, period=period, earned=earned, amount=amount,
                          status="pending" if amount > 0 else "nothing"))
            try:
                db.commit()
            except IntegrityError:  # another run wrote it first
                db.rollback()
        return sellers


def run(engine: Engine, stripe: StripeGateway, period: str) -> list[PayoutResult]:
    """Pay every seller for ``period``; safe to run again (it retries what is pending)."""
    start, end = period_bounds(period)
    if end > utcnow():
        raise InvalidInput(f"period {period} has not ended yet", code="period_open")
    _prepare(engine, period)
    out: list[PayoutResult] = []
    with Session(engine) as db:
        rows = list(db.execute(select(Payout, BillingProfile).outerjoin(
            BillingProfile, BillingProfile.account_id == Payout.seller_id)
            .where((Payout.period == period)
                   | ((Payout.period < period) & (Payout.status == "pending")))
            .order_by(Payout.seller_id, Payout.period)).all())
    for payout, prof in rows:
        if payout.status != "pending":
            out.append(PayoutResult(payout.seller_id, payout.period, payout.earned, payout.amount,
                                    payout.status, payout.transfer_id))
            continue
        if prof is not None and prof.connect_account_id and not prof.payouts_enabled:
            try:  # a missed account.updated event must not keep a seller unpaid
                if stripe.account(prof.connect_account_id)["payouts_enabled"]:
                    prof.payouts_enabled = True
                    with engine.begin() as conn:
                        conn.execute(update(BillingProfile).where(
                            BillingProfile.account_id == prof.account_id)
                            .values(payouts_enabled=True))
            except Exception as exc:
                log.warning("could not refresh %s: %s", prof.connect_account_id, exc)
        if prof is None or not prof.connect_account_id or not prof.payouts_enabled:
            out.append(PayoutResult(payout.seller_id, payout.period, payout.earned, payout.amount,
                                    "not_onboarded"))
            continue
        try:
            tid = stripe.transfer(prof.connect_account_id, payout.amount // MICRO_PER_CENT,
                                  payout.id, payout.period,
                                  payout.idempotency_key(prof.connect_account_id))
        except Exception as exc:  # Stripe down or refusing: stays pending for the next run
            with engine.begin() as conn:
                conn.execute(update(Payout).where(Payout.id == payout.id).values(
                    attempts=Payout.attempts + 1, last_error=str(exc)[:2000]))
            out.append(PayoutResult(payout.seller_id, payout.period, payout.earned, payout.amount,
                                    "pending", error=str(exc)))
            continue
        with engine.begin() as conn:
            conn.execute(update(Payout).where(Payout.id == payout.id).values(
                status="paid", transfer_id=tid, paid_at=utcnow(),
                attempts=Payout.attempts + 1))
        out.append(PayoutResult(payout.seller_id, payout.period, payout.earned, payout.amount,
                                "paid", tid))
    return out
