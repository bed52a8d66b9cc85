"""Delivers the alert outbox: each due row is claimed (a conditional UPDATE, so several
gateway processes never send one twice at once), POSTed with its ``Aimarket-Signature``, and
marked delivered on a 2xx, else retried with exponential backoff (jittered) until
``alert_max_attempts``. Runs on a timer in the app's lifespan, never inside a request; each
round also prunes the daily-cap alert states of past days and the outbox rows sent or given
up more than 30 days ago."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import or_, select, update
from starlette.concurrency import run_in_threadpool

from metering import utcnow

from . import alerts
from .db import rows_changed
from .models import AlertDelivery, AlertRule
from .webhook_signing import HEADER, sign

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)
CLAIM_S = 60  # a claimed row another sender may take over after this (its sender died)
TIMEOUT_S = 10.0
BATCH = 50


def backoff_s(attempts: int, base_s: float) -> float:
    """The wait after the ``attempts``-th failure: base * 2**(n-1), capped at a day, +-20%."""
    return min(base_s * 2 ** max(attempts - 1, 0), 86_400.0) * random.uniform(0.8, 1.2)


def _claim(svc: Services, now: datetime) -> list[tuple[int, str, str, str]]:
    """(id, url, body, secret) of the due rows this sender now owns."""
    with svc.sessions() as db:
        due = db.execute(select(AlertDelivery.id).where(
            AlertDelivery.status == "pending", AlertDelivery.next_attempt_at <= now,
            or_(AlertDelivery.claimed_until.is_(None), AlertDelivery.claimed_until < now))
            .order_by(AlertDelivery.next_attempt_at).limit(BATCH)).scalars().all()
        mine = []
        for row_id in due:
            won = rows_changed(db.execute(update(AlertDelivery).where(
                AlertDelivery.id == row_id, AlertDelivery.status == "pending",
                or_(AlertDelivery.claimed_until.is_(None), AlertDelivery.claimed_until < now))
                .values(claimed_until=now + timedelta(seconds=CLAIM_S))))
            db.commit()
            if won:
                mine.append(row_id)
        rows = db.execute(select(AlertDelivery, AlertRule.secret_salt)
                          .join(AlertRule, AlertRule.id == AlertDelivery.rule_id)
                          .where(AlertDelivery.id.in_(mine))).all() if mine else []
        return [(d.id, d.url, d.body, alerts.webhook_secret(svc.signing_key, salt))
                for d, salt in rows]


def _record(svc: Services, row_id: int, error: str | None, now: datetime) -> None:
    with svc.sessions() as db:
        d = db.get(AlertDelivery, row_id)
        if d is None:
            return
        d.attempts += 1
        d.claimed_until = None
        if error is None:
            d.status, d.delivered_at, d.last_error = "delivered", now, ""
        else:
            d.last_error = error[:300]
            if d.attempts >= svc.settings.alert_max_attempts:
                d.status = "failed"
            else:
                d.next_attempt_at = now + timedelta(
                    seconds=backoff_s(d.attempts, svc.settings.alert_retry_base_s))
        db.commit()


async def _post(client: httpx.AsyncClient, url: str, body: str, secret: str, t: int
                ) -> str | None:
    """None when the receiver took it (2xx), else why not."""
    data = body.encode()
    try:
        r = await client.post(url, content=data, headers={
            "Content-Type": "application/json", HEADER: sign(secret, data, t),
            "User-Agent": "aimarket-alerts"})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"


async def send_due(svc: Services, now: datetime | None = None) -> int:
    """Send every due delivery once; the number delivered. ``now`` is injectable (tests)."""
    now = now or utcnow()
    claimed = await run_in_threadpool(_claim, svc, now)
    if not claimed:
        return 0
    delivered = 0
    async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
        for row_id, url, body, secret in claimed:
            error = await _post(client, url, body, secret, int(utcnow().timestamp()))
            await run_in_threadpool(_record, svc, row_id, error, now)
            delivered += error is None
    return delivered


async def run_round(svc: Services, now: datetime | None = None) -> None:
    """One round of the timer: evaluate thresholds, send due webhooks, prune stale states."""
    await alerts.evaluate(svc)
    await send_due(svc, now)

    def prune() -> int:
        with svc.sessions() as db:
            return (alerts.prune_states(db, now or utcnow())
                    + alerts.prune_deliveries(db, now or utcnow()))

    await run_in_threadpool(prune)


async def alerts_loop(svc: Services, every_s: float) -> None:
    """Run an alerts round on a timer (failures wait for next round)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await run_round(svc)
        except Exception:
            log.exception("usage alerts round failed; it runs again in %ss", every_s)
