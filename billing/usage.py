"""Postpaid usage: from the SQL ledger to Stripe's meter through an outbox, exactly once.

1. ``collect`` turns a postpaid buyer's unbilled paid calls into one ``UsageReport`` per
   (customer, calendar month) in a single transaction: each usage event names its report
   (``usage_events.billed_in``), so a call lands in exactly one report, and calls the flusher
   writes later land in the next one.
2. ``send`` pushes pending reports as aggregated meter events, one customer at a time (Stripe
   allows one concurrent meter call per customer and meter; a row lock in
   ``billing_profiles`` keeps a second sender off the customer), with the report's
   deterministic identifier as Stripe's event identifier and idempotency key. A report stays
   pending until Stripe acknowledges it: Stripe down or answering 500 loses nothing, and a
   rerun after an interruption re-sends an identifier Stripe has already counted once.
3. When Stripe holds the usage, the calls are Stripe's to invoice: the same amount goes back
   onto the buyer's credit balance (reference ``postpaid:<report>``), so the credit line only
   bounds usage not yet reported.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import stripe as stripe_sdk
from sqlalchemy import ColumnElement, Engine, func, select, update
from sqlalchemy.orm import Session

from metering import UsageEvent, add_credit, utcnow

from .stripe_api import StripeGateway
from .tables import BillingProfile, UsageReport

log = logging.getLogger(__name__)

CreditFn = Callable[[int, int, Callable[[], Awaitable[bool]]], Awaitable[int]]
LOCK_SECONDS = 300
# What a postpaid buyer's card is billed for: hosted paid calls and the calls a Nano Kit
# reported in signed receipts (POST /v1/edge-usage, one event per verified batch)
BILLED_KINDS = ("paid", "edge")


@dataclass
class SyncResult:
    reports_created: int = 0
    reports_sent: int = 0
    calls_reported: int = 0
    value_reported: int = 0
    failed: int = 0
    rejected: int = 0
    skipped_locked: int = 0


def _month_bounds(ts: datetime) -> tuple[datetime, datetime]:
    start = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def collect(engine: Engine) -> int:
    """Make reports of every postpaid buyer's unbilled paid calls; returns how many."""
    made = 0
    with Session(engine) as db:
        buyers = db.execute(select(BillingProfile.account_id)
                            .where(BillingProfile.postpaid_since.is_not(None),
                                   BillingProfile.customer_id.is_not(None))).scalars().all()
    for account_id in buyers:
        made += collect_account(engine, account_id)
    return made


def _unbilled(account_id: int, since: datetime, until: datetime | None
              ) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [
        UsageEvent.account_id == account_id, UsageEvent.kind.in_(BILLED_KINDS),
        UsageEvent.billed_in.is_(None), UsageEvent.created_at >= since]
    if until is not None:
        where.append(UsageEvent.created_at < until)
    return where


def collect_account(engine: Engine, account_id: int) -> int:
    """Reports of one buyer's unbilled paid calls made while postpaid ([since, until))."""
    with Session(engine) as db:
        prof = db.get(BillingProfile, account_id)
        if prof is None or prof.postpaid_since is None or prof.customer_id is None:
            return 0
        customer, since = prof.customer_id, _aware(prof.postpaid_since)
        until = _aware(prof.postpaid_until) if prof.postpaid_until else None
    return _collect(engine, account_id, customer, since, until)


def _collect(engine: Engine, account_id: int, customer: str, since: datetime,
             until: datetime | None) -> int:
    made = 0
    with Session(engine) as db, db.begin():
        first = db.execute(select(func.min(UsageEvent.created_at))
                           .where(*_unbilled(account_id, since, until))).scalar_one()
        while first is not None:
            start, end = _month_bounds(_aware(first))
            report = UsageReport(account_id=account_id, customer_id=customer,
                                 month=f"{start:%Y-%m}", status="building")
            db.add(report)
            db.flush()
            db.execute(update(UsageEvent)
                       .where(*_unbilled(account_id, since, until),
                              UsageEvent.created_at >= start,
                              UsageEvent.created_at < end)
                       .values(billed_in=report.id)
                       .execution_options(synchronize_session=False))
            calls, value, last = db.execute(
                select(func.count(), func.coalesce(func.sum(UsageEvent.price), 0),
                       func.max(UsageEvent.created_at))
                .where(UsageEvent.billed_in == report.id)).one()
            if calls:
                report.calls, report.value, report.event_ts = int(calls), int(value), last
                report.status = "pending"
                made += 1
            else:  # a concurrent collector took these calls first
                db.delete(report)
                break
            first = db.execute(select(func.min(UsageEvent.created_at))
                               .where(*_unbilled(account_id, since, until),
                                      UsageEvent.created_at >= end)).scalar_one()
    return made


def _lock(engine: Engine, account_id: int, token: str) -> bool:
    """Take (or renew) this sender's lease on the customer; False when another holds it."""
    now = utcnow()
    with engine.begin() as conn:
        got = conn.execute(
            update(BillingProfile)
            .where(BillingProfile.account_id == account_id,
                   BillingProfile.sync_lock_until.is_(None)
                   | (BillingProfile.sync_lock_until < now)
                   | (BillingProfile.sync_lock_token == token))
            .values(sync_lock_until=now + timedelta(seconds=LOCK_SECONDS),
                    sync_lock_token=token))
        return got.rowcount == 1


def _unlock(engine: Engine, account_id: int, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(BillingProfile).where(BillingProfile.account_id == account_id,
                                                  BillingProfile.sync_lock_token == token)
                     .values(sync_lock_until=None, sync_lock_token=None))


def _open(engine: Engine, account_id: int) -> list[UsageReport]:
    with Session(engine, expire_on_commit=False) as db:
        return list(db.execute(select(UsageReport).where(
            UsageReport.account_id == account_id,
            UsageReport.status.in_(("pending", "acked"))).order_by(UsageReport.id)).scalars())


def _set(engine: Engine, report: UsageReport, status: str, error: str = "") -> None:
    values: dict[str, object] = {"status": status, "attempts": UsageReport.attempts + 1}
    if error:
        values["last_error"] = error[:2000]
    with engine.begin() as conn:
        conn.execute(update(UsageReport).where(UsageReport.id == report.id).values(**values))


def _mark_sent(engine: Engine, report: UsageReport) -> bool:
    """Hand an acknowledged report's amount back to the credit balance, in one transaction
    with its status; False when it was already done."""
    with engine.begin() as conn:
        done = conn.execute(update(UsageReport)
                            .where(UsageReport.id == report.id, UsageReport.status == "acked")
                            .values(status="sent", sent_at=utcnow())).rowcount
        if not done or report.value <= 0:
            return False
        return add_credit(engine, report.account_id, report.value, reason="postpaid",
                          reference=f"postpaid:{report.id}", conn=conn,
                          note=f"{report.calls} calls billed to card ({report.month})")


async def _send_account(engine: Engine, stripe: StripeGateway, credit: CreditFn,
                        account_id: int, result: SyncResult) -> None:
    token = uuid.uuid4().hex
    if not await asyncio.to_thread(_lock, engine, account_id, token):
        result.skipped_locked += 1  # another sender holds this customer
        return
    try:
        for report in await asyncio.to_thread(_open, engine, account_id):
            if not await asyncio.to_thread(_lock, engine, account_id, token):
                return  # the lease ran out and another sender took over
            if report.status == "pending":
                ts = int(_aware(report.event_ts or report.created_at).timestamp())
                try:
                    await asyncio.to_thread(
                        stripe.meter_event, report.customer_id, report.value,
                        report.identifier, ts, f"{report.identifier}-{report.attempts}")
                except stripe_sdk.InvalidRequestError as exc:  # refused for good
                    log.error("usage report %s refused by Stripe: %s", report.id, exc)
                    await asyncio.to_thread(_set, engine, report, "rejected", str(exc))
                    result.rejected += 1
                    continue
                except Exception as exc:  # Stripe down, 5xx, 429, network: stays pending
                    log.warning("usage report %s not accepted yet: %s", report.id, exc)
                    await asyncio.to_thread(_set, engine, report, "pending", str(exc))
                    result.failed += 1
                    return  # keep this customer's reports in order; the next sync retries
                # Stripe holds it: record that before anything else can fail.
                await asyncio.to_thread(_set, engine, report, "acked")

            async def record(r: UsageReport = report) -> bool:
                return await asyncio.to_thread(_mark_sent, engine, r)

            try:
                await credit(account_id, report.value, record)
            except Exception as exc:  # Redis down: the report stays acked, credited next sync
                log.warning("usage report %s acknowledged, credit pending: %s", report.id, exc)
                result.failed += 1
                return
            result.reports_sent += 1
            result.calls_reported += report.calls
            result.value_reported += report.value
    finally:
        await asyncio.to_thread(_unlock, engine, account_id, token)


async def sync(engine: Engine, stripe: StripeGateway, credit: CreditFn,
               concurrency: int = 4) -> SyncResult:
    """Collect new usage into reports and send every pending report."""
    result = SyncResult(reports_created=await asyncio.to_thread(collect, engine))
    with Session(engine) as db:
        accounts = list(db.execute(select(UsageReport.account_id)
                                   .where(UsageReport.status.in_(("pending", "acked")))
                                   .distinct()).scalars())
    gate = asyncio.Semaphore(concurrency)

    async def one(account_id: int) -> None:
        async with gate:
            await _send_account(engine, stripe, credit, account_id, result)

    await asyncio.gather(*(one(a) for a in accounts))
    return result
