"""What buyers spent and sellers earned, read from the SQL ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from metering import UsageEvent, balance, format_usd

from .models import Account, Listing

if TYPE_CHECKING:
    from .services import Services

_paid = func.sum(case((UsageEvent.kind == "paid", 1), else_=0))
_trial = func.sum(case((UsageEvent.kind == "trial", 1), else_=0))
_exports = func.sum(case((UsageEvent.kind == "export", 1), else_=0))
_demo = func.sum(case((UsageEvent.kind == "demo", 1), else_=0))
_calls = func.sum(case((UsageEvent.kind.in_(("trial", "paid")), 1), else_=0))


async def usage(svc: Services, account: Account, days: int = 30) -> dict[str, Any]:
    """Calls and spend per listing (all time) and per UTC day and listing (last ``days``)."""
    since = datetime.now(UTC) - timedelta(days=days)
    day = func.date(UsageEvent.created_at)

    def query() -> tuple[list[Any], list[Any], int]:
        with svc.sessions() as db:
            rows = db.execute(
                select(Listing.slug, _calls, _trial, _paid, func.sum(UsageEvent.price))
                .join(Listing, Listing.id == UsageEvent.listing_id)
                .where(UsageEvent.account_id == account.id)
                .group_by(Listing.slug).order_by(Listing.slug)
            ).all()
            daily = db.execute(
                select(day, Listing.slug, _calls, _trial, _paid, func.sum(UsageEvent.price))
                .join(Listing, Listing.id == UsageEvent.listing_id)
                .where(UsageEvent.account_id == account.id, UsageEvent.created_at >= since)
                .group_by(day, Listing.slug).order_by(day, Listing.slug)
            ).all()
        return list(rows), list(daily), balance(svc.engine, account.id)

    rows, daily, ledger_balance = await run_in_threadpool(query)
    items = [{"slug": s, "calls": int(n or 0), "trial_calls": int(t or 0),
              "paid_calls": int(p or 0), "spend": format_usd(int(sp or 0))}
             for s, n, t, p, sp in rows]
    return {
        "credits": format_usd(await svc.meter.credits(account.id)),
        "ledger_balance": format_usd(ledger_balance),
        "total": {
            "calls": sum(i["calls"] for i in items),
            "trial_calls": sum(i["trial_calls"] for i in items),
            "paid_calls": sum(i["paid_calls"] for i in items),
            "spend": format_usd(sum(int(r[4] or 0) for r in rows)),
        },
        "listings": items,
        "days": [{"date": str(d), "slug": s, "calls": int(n or 0), "trial_calls": int(t or 0),
                  "paid_calls": int(p or 0), "spend": format_usd(int(sp or 0))}
                 for d, s, n, t, p, sp in daily],
    }


def earnings(db: Session, seller: Account) -> dict[str, Any]:
    """Calls, revenue, the seller's share and the fee per listing, and their totals."""
    rows = db.execute(
        select(Listing.slug, _calls, _trial, _paid, func.sum(UsageEvent.price),
               func.sum(UsageEvent.seller_share), func.sum(UsageEvent.platform_fee), _exports,
               _demo)
        .join(Listing, Listing.id == UsageEvent.listing_id)
        .where(UsageEvent.seller_id == seller.id)
        .group_by(Listing.slug).order_by(Listing.slug)
    ).all()
    items = []
    totals = [0, 0, 0, 0, 0, 0, 0, 0]
    for slug, n, t, p, gross, share, fee, ex, demo in rows:
        vals = [int(n or 0), int(t or 0), int(p or 0), int(gross or 0), int(share or 0),
                int(fee or 0), int(ex or 0), int(demo or 0)]
        totals = [a + b for a, b in zip(totals, vals, strict=True)]
        items.append(_earn(slug, vals))
    return {"total": _earn(None, totals), "listings": items}


def _earn(slug: str | None, v: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {} if slug is None else {"slug": slug}
    out.update({"calls": v[0], "trial_calls": v[1], "paid_calls": v[2], "revenue": format_usd(v[3]),
                "seller_share": format_usd(v[4]), "platform_fee": format_usd(v[5]),
                "exports_sold": v[6], "demo_calls": v[7]})
    return out
