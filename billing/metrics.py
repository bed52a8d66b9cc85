"""Billing's Prometheus gauges, read from the outbox tables at scrape time (syncs and payout
runs happen in other processes too: the tables are the truth)."""

from __future__ import annotations

from prometheus_client import Gauge
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from .tables import Payout, UsageReport

REPORTS = Gauge("aimarket_billing_usage_reports", "Usage reports for Stripe's meter, by status "
                "(pending: not yet accepted; acked: accepted, credit step pending; rejected: "
                "refused by Stripe for good)", ["status"],
                multiprocess_mode="mostrecent")
REPORTED = Gauge("aimarket_billing_usage_reported_micro_usd",
                 "Usage Stripe's meter has acknowledged, micro-USD",
                 multiprocess_mode="mostrecent")
PAYOUTS = Gauge("aimarket_billing_payouts", "Seller payouts by status", ["status"],
                multiprocess_mode="mostrecent")  # gauges set at scrape time, by any worker


def refresh(engine: Engine) -> None:
    with Session(engine) as db:
        reports = dict(db.execute(select(UsageReport.status, func.count())
                                  .group_by(UsageReport.status)).all())
        reported = db.execute(select(func.coalesce(func.sum(UsageReport.value), 0)).where(
            UsageReport.status.in_(("acked", "sent")))).scalar_one()
        payouts = dict(db.execute(select(Payout.status, func.count())
                                  .group_by(Payout.status)).all())
    for status in ("pending", "acked", "sent", "rejected"):
        REPORTS.labels(status).set(int(reports.get(status, 0)))
    REPORTED.set(int(reported))
    for status in ("pending", "paid", "nothing"):
        PAYOUTS.labels(status).set(int(payouts.get(status, 0)))
