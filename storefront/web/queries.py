"""Read-only queries the pages need beyond the API's: categories and per-day series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from metering import UsageEvent, format_usd

from ..models import Listing


def categories(db: Session) -> list[tuple[str, int]]:
    """(category, listed models) of listings with a live version, by name."""
    rows = db.execute(
        select(Listing.category, func.count())
        .where(Listing.status == "listed", Listing.live_version_id.is_not(None))
        .group_by(Listing.category).order_by(Listing.category)
    ).all()
    return [(c, int(n)) for c, n in rows]


def tasks(db: Session) -> list[str]:
    return list(db.execute(
        select(Listing.task).where(Listing.status == "listed", Listing.live_version_id.is_not(None))
        .distinct().order_by(Listing.task)
    ).scalars())


def seller_daily(db: Session, seller_id: int, days: int = 30) -> list[dict[str, Any]]:
    """Calls (demo, trial, paid) and revenue per UTC day over the last ``days``."""
    since = datetime.now(UTC) - timedelta(days=days)
    day = func.date(UsageEvent.created_at)
    rows = db.execute(
        select(day, func.count(),
               func.sum(case((UsageEvent.kind == "demo", 1), else_=0)),
               func.sum(UsageEvent.price), func.sum(UsageEvent.seller_share))
        .where(UsageEvent.seller_id == seller_id, UsageEvent.created_at >= since,
               UsageEvent.kind.in_(("demo", "trial", "paid")))
        .group_by(day).order_by(day)
    ).all()
    return [{"date": str(d), "calls": int(n), "demo_calls": int(demo or 0),
             "revenue": format_usd(int(gross or 0)), "revenue_micro": int(gross or 0),
             "seller_share": format_usd(int(share or 0))}
            for d, n, demo, gross, share in rows]
