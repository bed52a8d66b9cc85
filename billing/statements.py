"""Monthly statements from the ledger, for buyers and sellers, as JSON-ready dicts or CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import Engine, case, func, select
from sqlalchemy.orm import Session

from metering import CreditEntry, UsageEvent, format_usd

from .payouts import period_bounds
from .tables import BillingProfile, Payout, UsageReport

_paid = func.sum(case((UsageEvent.kind == "paid", 1), else_=0))
_trial = func.sum(case((UsageEvent.kind == "trial", 1), else_=0))


def buyer(engine: Engine, account_id: int, month: str, slugs: dict[int, str]) -> dict[str, Any]:
    """What the buyer was charged in ``month`` per listing, how it was paid (prepaid credit or
    card, through the usage reported to Stripe), and the credit movements."""
    start, end = period_bounds(month)
    in_month = (UsageEvent.account_id == account_id, UsageEvent.created_at >= start,
                UsageEvent.created_at < end)
    with Session(engine) as db:
        rows = db.execute(
            select(UsageEvent.listing_id, UsageEvent.kind, func.count(),
                   func.coalesce(func.sum(UsageEvent.price), 0))
            .where(*in_month).group_by(UsageEvent.listing_id, UsageEvent.kind)
            .order_by(UsageEvent.listing_id, UsageEvent.kind)).all()
        reported = db.execute(
            select(func.count(), func.coalesce(func.sum(UsageReport.value), 0),
                   func.coalesce(func.sum(UsageReport.calls), 0))
            .where(UsageReport.account_id == account_id, UsageReport.month == month,
                   UsageReport.status == "sent")).one()
        pending = int(db.execute(
            select(func.coalesce(func.sum(UsageEvent.price), 0))
            .where(*in_month, UsageEvent.kind == "paid", UsageEvent.billed_in.is_not(None),
                   UsageEvent.billed_in.in_(select(UsageReport.id).where(
                       UsageReport.status.in_(("pending", "acked")))))).scalar_one())
        prof = db.get(BillingProfile, account_id)
        if prof is not None and prof.postpaid_since is not None:  # not yet in a report
            window = [UsageEvent.created_at >= prof.postpaid_since]
            if prof.postpaid_until is not None:
                window.append(UsageEvent.created_at < prof.postpaid_until)
            pending += int(db.execute(
                select(func.coalesce(func.sum(UsageEvent.price), 0))
                .where(*in_month, *window, UsageEvent.kind == "paid",
                       UsageEvent.billed_in.is_(None))).scalar_one())
        credits = db.execute(
            select(CreditEntry.reason, func.coalesce(func.sum(CreditEntry.amount), 0))
            .where(CreditEntry.account_id == account_id, CreditEntry.created_at >= start,
                   CreditEntry.created_at < end, CreditEntry.reason != "usage")
            .group_by(CreditEntry.reason).order_by(CreditEntry.reason)).all()
    lines: list[dict[str, Any]] = []
    total = 0
    for listing_id, kind, calls, amount in rows:
        total += int(amount)
        lines.append({"listing": slugs.get(listing_id, str(listing_id)), "kind": kind,
                      "calls": int(calls), "amount": format_usd(int(amount)),
                      "amount_micro": int(amount)})
    return {
        "month": month, "account_id": account_id, "lines": lines,
        "total": format_usd(total), "total_micro": total,
        "billed_to_card": {"reports": int(reported[0]), "calls": int(reported[2]),
                           "amount": format_usd(int(reported[1])),
                           "amount_micro": int(reported[1])},
        "awaiting_report_micro": pending,
        "credit_movements": [{"reason": r, "amount": format_usd(int(a)), "amount_micro": int(a)}
                             for r, a in credits],
    }


def seller(engine: Engine, seller_id: int, month: str, slugs: dict[int, str]) -> dict[str, Any]:
    """A seller's month: calls, gross, platform fee and share per listing, and the payout."""
    start, end = period_bounds(month)
    with Session(engine) as db:
        rows = db.execute(
            select(UsageEvent.listing_id, _paid, _trial,
                   func.sum(case((UsageEvent.kind == "export", 1), else_=0)),
                   func.coalesce(func.sum(UsageEvent.price), 0),
                   func.coalesce(func.sum(UsageEvent.platform_fee), 0),
                   func.coalesce(func.sum(UsageEvent.seller_share), 0))
            .where(UsageEvent.seller_id == seller_id, UsageEvent.created_at >= start,
                   UsageEvent.created_at < end)
            .group_by(UsageEvent.listing_id).order_by(UsageEvent.listing_id)).all()
        payout = db.execute(select(Payout).where(Payout.seller_id == seller_id,
                                                 Payout.period == month)).scalar_one_or_none()
    lines = []
    sums = [0, 0, 0]
    for lid, paid, trial, exports, gross, fee, share in rows:
        vals = [int(gross), int(fee), int(share)]
        sums = [a + b for a, b in zip(sums, vals, strict=True)]
        lines.append({"listing": slugs.get(lid, str(lid)), "paid_calls": int(paid or 0),
                      "trial_calls": int(trial or 0), "exports": int(exports or 0),
                      "gross": format_usd(vals[0]), "platform_fee": format_usd(vals[1]),
                      "seller_share": format_usd(vals[2]), "gross_micro": vals[0],
                      "platform_fee_micro": vals[1], "seller_share_micro": vals[2]})
    return {
        "month": month, "seller_id": seller_id, "lines": lines,
        "gross": format_usd(sums[0]), "platform_fee": format_usd(sums[1]),
        "seller_share": format_usd(sums[2]), "seller_share_micro": sums[2],
        "payout": None if payout is None else {
            "status": payout.status, "amount": format_usd(payout.amount),
            "amount_micro": payout.amount, "transfer_id": payout.transfer_id},
    }


def to_csv(statement: dict[str, Any]) -> str:
    """The statement's lines as CSV (micro-unit columns included, for exact reconciliation)."""
    lines = statement["lines"]
    out = io.StringIO()
    if not lines:
        return "month\n" + statement["month"] + "\n"
    writer = csv.DictWriter(out, fieldnames=["month", *lines[0].keys()], lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({"month": statement["month"], **line})
    return out.getvalue()
