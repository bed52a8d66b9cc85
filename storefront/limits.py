"""What a buyer may still spend and call: credits, each key's caps and spend so far, and the
free trial calls left per listing (``GET /v1/account/limits``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from metering import UsageEvent, format_usd

from .apikeys import key_json
from .models import Account, ApiKey, Listing, ListingVersion

if TYPE_CHECKING:
    from .services import Services


def _usd(v: int | None) -> str | None:
    return None if v is None else format_usd(v)


def _cap(cap: int | None, spent: int) -> dict[str, Any]:
    return {"cap": _usd(cap), "spent": format_usd(spent),
            "remaining": None if cap is None else format_usd(max(cap - spent, 0))}


def _spend_by_key(db: Session, account_id: int, now: datetime) -> dict[int, tuple[int, int]]:
    """key id -> (spent today, spent this month), UTC, from the ledger. Aggregates filtered
    by time (never a GROUP BY on a comparison: PostgreSQL refuses that)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    rows = db.execute(
        select(UsageEvent.api_key_id,
               func.coalesce(func.sum(UsageEvent.price).filter(UsageEvent.created_at >= day), 0),
               func.coalesce(func.sum(UsageEvent.price), 0))
        .where(UsageEvent.account_id == account_id, UsageEvent.api_key_id.is_not(None),
               UsageEvent.created_at >= month)
        .group_by(UsageEvent.api_key_id)
    ).all()
    return {int(k): (int(d), int(m)) for k, d, m in rows if k is not None}


def _trial_listings(db: Session, account_id: int, slug: str | None
                    ) -> list[tuple[int, str, int]]:
    """(listing id, slug, trial calls) of the listings the account called, or of ``slug``."""
    q = (select(Listing.id, Listing.slug, ListingVersion.trial_calls)
         .join(ListingVersion, ListingVersion.id == Listing.live_version_id)
         .where(Listing.status == "listed"))
    if slug is not None:
        q = q.where(Listing.slug == slug)
    else:
        called = select(UsageEvent.listing_id).where(
            UsageEvent.account_id == account_id, UsageEvent.kind.in_(("trial", "paid")))
        q = q.where(Listing.id.in_(called))
    return [(int(i), s, int(t)) for i, s, t in db.execute(q.order_by(Listing.slug)).all()]


@dataclass(frozen=True)
class Figures:
    """The raw figures behind ``limits`` (micro-units), read once; usage alerts reuse them."""

    now: datetime
    credits: int
    keys: list[ApiKey]
    spend: dict[int, tuple[int, int]]  # key id -> (spent today, spent this month)
    trials: list[tuple[str, int, int]]  # (slug, trial calls, trial calls used)


async def figures(svc: Services, account_id: int, slug: str | None = None) -> Figures:
    now = datetime.now(UTC)

    def query() -> tuple[list[ApiKey], dict[int, tuple[int, int]], list[tuple[int, str, int]]]:
        with svc.sessions() as db:
            keys = list(db.execute(select(ApiKey).where(
                ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.id)).scalars())
            db.expunge_all()
            return keys, _spend_by_key(db, account_id, now), _trial_listings(db, account_id,
                                                                              slug)

    keys, spend, listings = await run_in_threadpool(query)
    credits = await svc.meter.credits(account_id)  # hydrates the counters first
    names = svc.meter.names
    used = await svc.redis.mget([names.trial(account_id, lid) for lid, _, _ in listings]) \
        if listings else []
    trials = [(s, total, min(int(u or 0), total))
              for (_, s, total), u in zip(listings, used, strict=True)]
    return Figures(now, credits, keys, spend, trials)


async def limits(svc: Services, account: Account, slug: str | None = None) -> dict[str, Any]:
    f = await figures(svc, account.id, slug)
    trials = [{"slug": s, "trial_calls": total, "trial_used": used,
               "trial_remaining": total - used} for s, total, used in f.trials]
    return {
        "credits": format_usd(f.credits),
        "as_of": f.now.isoformat(),
        "keys": [{**{k: v for k, v in key_json(key).items()
                     if k not in ("spend_cap_day", "spend_cap_month", "revoked_at")},
                  "rate_limit": {"rps": key.rate_limit_rps or svc.settings.rate_limit_rps,
                                 "burst": key.rate_limit_burst or svc.settings.rate_limit_burst},
                  "day": _cap(key.spend_cap_day, f.spend.get(key.id, (0, 0))[0]),
                  "month": _cap(key.spend_cap_month, f.spend.get(key.id, (0, 0))[1])}
                 for key in f.keys],
        "trials": trials,
    }
