"""Usage alerts: a key's thresholds (a share of its daily cap, credits below an amount, a
listing's trial calls used up), evaluated off the paid-call path from the figures of
``GET /v1/account/limits``, each firing once per crossing (re-armed when the figure goes back:
a new UTC day, a top-up, a raised cap). A crossing shows as a banner on the dashboard and, with
a webhook URL, is queued in the outbox that ``alert_sender`` delivers, signed.

The webhook secret is never stored: it is ``whsec_`` + HMAC-SHA256(app signing key,
per-rule random salt), shown once when set or rotated (rotating the app's signing key changes
every webhook secret too)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from metering import format_usd, to_micro, utcnow
from serving import Conflict, InvalidInput

from .apikeys import own_key
from .db import rows_changed
from .limits import Figures, figures
from .models import Account, AlertDelivery, AlertRule, AlertState, ApiKey

if TYPE_CHECKING:
    from .services import Services

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
STATE_KEEP_DAYS = 3  # daily-cap states of older UTC days are pruned (they can never fire)
DELIVERY_KEEP_DAYS = 30  # delivered or given-up webhook rows are kept this long, then pruned


class AlertRules(BaseModel):
    """What a key owner sets (``PUT /v1/keys/{key_id}/alerts``); null turns a threshold off."""

    daily_cap_percent: int | None = Field(None, ge=1, le=100,
                                          description="alert at this % of the daily cap")
    credits_below: str | None = Field(None, max_length=32,
                                      description='alert when credits fall below this USD')
    trial_used_up: bool = Field(False, description="alert when a listing's trial calls end")
    webhook_url: str | None = Field(None, max_length=2048,
                                    description="https (or http on loopback) endpoint")
    rotate_secret: bool = Field(False, description="a new webhook secret (shown once)")


def check_url(url: str) -> str:
    """An https URL, or http on a loopback host; no credentials, no private IP literals."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        _ = parts.port
    except ValueError as exc:
        raise InvalidInput("webhook_url is not a URL", code="invalid_webhook_url") from exc
    if not host or parts.username is not None or parts.password is not None:
        raise InvalidInput("webhook_url needs a host and no user or password",
                           code="invalid_webhook_url")
    loopback = host in LOOPBACK_HOSTS
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise InvalidInput("webhook_url must be https (http only on 127.0.0.1 or localhost)",
                           code="invalid_webhook_url")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and not ip.is_loopback and (
            ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified):
        raise InvalidInput("webhook_url may not point at a private address",
                           code="invalid_webhook_url")
    return url.strip()


def webhook_secret(signing_key: str, salt: str) -> str:
    return "whsec_" + hmac.new(signing_key.encode(), b"aimarket alert webhook\0" +
                               salt.encode(), hashlib.sha256).hexdigest()


def rules_json(rule: AlertRule | None, key: ApiKey) -> dict[str, Any]:
    return {"key_id": key.id,
            "daily_cap_percent": rule.daily_cap_percent if rule else None,
            "credits_below": format_usd(rule.credits_below)
            if rule and rule.credits_below is not None else None,
            "trial_used_up": bool(rule and rule.trial_used_up),
            "webhook_url": rule.webhook_url if rule else None,
            "has_webhook_secret": bool(rule and rule.webhook_url)}


def _rule(db: Session, key: ApiKey) -> AlertRule | None:
    return db.execute(select(AlertRule).where(AlertRule.api_key_id == key.id)).scalar_one_or_none()


def get_rules(db: Session, account: Account, key_id: int) -> dict[str, Any]:
    key = own_key(db, account, key_id)
    rule = _rule(db, key)
    out = rules_json(rule, key)
    out["crossed"] = [] if rule is None else [
        _state_json(s) for s in db.execute(select(AlertState).where(
            AlertState.rule_id == rule.id, AlertState.crossed.is_(True))
            .order_by(AlertState.id)).scalars()]
    out["deliveries"] = [] if rule is None else [
        {"event_id": d.event_id, "status": d.status, "attempts": d.attempts,
         "last_error": d.last_error, "created_at": d.created_at.isoformat()}
        for d in db.execute(select(AlertDelivery).where(AlertDelivery.rule_id == rule.id)
                            .order_by(AlertDelivery.id.desc()).limit(20)).scalars()]
    return out


def put_rules(db: Session, svc: Services, account: Account, key_id: int, body: AlertRules
              ) -> dict[str, Any]:
    """Set the key's thresholds; the answer carries ``webhook_secret`` only when one was made
    (the first webhook URL, or ``rotate_secret``): it is shown this once."""
    key = own_key(db, account, key_id)
    url = check_url(body.webhook_url) if body.webhook_url else None
    below = None if body.credits_below in (None, "") else to_micro(
        str(body.credits_below), field="credits_below")
    if below is not None and below <= 0:
        raise InvalidInput("credits_below must be above 0", code="invalid_amount")
    rule = _rule(db, key)
    fresh = rule is None or (url is not None and rule.webhook_url is None) or body.rotate_secret
    if rule is None:
        rule = AlertRule(api_key_id=key.id, account_id=account.id,
                         secret_salt=secrets.token_hex(16))
        db.add(rule)
    elif fresh:
        rule.secret_salt = secrets.token_hex(16)
    rule.daily_cap_percent, rule.credits_below = body.daily_cap_percent, below
    rule.trial_used_up, rule.webhook_url, rule.updated_at = body.trial_used_up, url, utcnow()
    db.commit()
    out = rules_json(rule, key)
    if fresh and url is not None:
        out["webhook_secret"] = webhook_secret(svc.signing_key, rule.secret_salt)
        out["note"] = ("store this webhook secret now: it is shown once; it verifies the "
                       "Aimarket-Signature header of every alert")
    return out


def queue_test(db: Session, account: Account, key_id: int) -> dict[str, Any]:
    """Queue a signed ``alert.test`` event to the key's webhook."""
    key = own_key(db, account, key_id)
    rule = _rule(db, key)
    if rule is None or not rule.webhook_url:
        raise Conflict("set a webhook_url first", code="no_webhook_url")
    event = _enqueue(db, rule, key, "alert.test", {"message": "a test alert"}, utcnow())
    db.commit()
    return {"event_id": event, "status": "pending"}


def _state_json(s: AlertState) -> dict[str, Any]:
    return {"kind": s.kind, "scope": s.scope, "since": s.changed_at.isoformat(),
            "message": s.detail}


def _enqueue(db: Session, rule: AlertRule, key: ApiKey, kind: str, data: dict[str, Any],
             now: datetime) -> str:
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps({"id": event_id, "type": kind, "created": int(now.timestamp()),
                       "key": {"id": key.id, "name": key.name}, "data": data},
                      separators=(",", ":"), sort_keys=True)
    db.add(AlertDelivery(event_id=event_id, rule_id=rule.id, url=rule.webhook_url or "",
                         body=body, next_attempt_at=now))
    return event_id


def _conditions(rule: AlertRule, key: ApiKey, f: Figures
                ) -> list[tuple[str, str, bool, str, dict[str, Any]]]:
    """(kind, scope, crossed now?, banner sentence, webhook data) of each threshold set."""
    out: list[tuple[str, str, bool, str, dict[str, Any]]] = []
    name = key.name or f"key {key.id}"
    if rule.daily_cap_percent is not None and key.spend_cap_day:
        spent = f.spend.get(key.id, (0, 0))[0]
        pct = rule.daily_cap_percent
        out.append(("daily_cap", f.now.date().isoformat(), spent * 100 >= key.spend_cap_day * pct,
                    f"{name} has spent {format_usd(spent)} of its {format_usd(key.spend_cap_day)}"
                    f" USD daily cap today (alert at {pct}%)",
                    {"threshold_percent": pct, "spent": format_usd(spent),
                     "cap": format_usd(key.spend_cap_day), "day": f.now.date().isoformat()}))
    if rule.credits_below is not None:
        out.append(("credits", "", f.credits < rule.credits_below,
                    f"your credits ({format_usd(f.credits)} USD) are below "
                    f"{format_usd(rule.credits_below)} USD",
                    {"credits": format_usd(f.credits),
                     "threshold": format_usd(rule.credits_below)}))
    if rule.trial_used_up:
        for slug, total, used in f.trials:
            if total > 0:
                out.append(("trial", slug, used >= total,
                            f"the {total} free trial calls of {slug} are used up",
                            {"slug": slug, "trial_calls": total, "trial_used": used}))
    return out


def _transition(db: Session, rule_id: int, kind: str, scope: str, crossed: bool, detail: str,
                now: datetime) -> bool:
    """Move the state to ``crossed``; True when this call made it cross (exactly one caller
    wins: a conditional UPDATE, or the unique insert)."""
    moved = rows_changed(db.execute(update(AlertState).where(
        AlertState.rule_id == rule_id, AlertState.kind == kind, AlertState.scope == scope,
        AlertState.crossed.is_(not crossed)).values(crossed=crossed, changed_at=now,
                                                    detail=detail)))
    if moved:
        return crossed
    if not crossed or db.execute(select(AlertState.id).where(
            AlertState.rule_id == rule_id, AlertState.kind == kind,
            AlertState.scope == scope)).first() is not None:
        return False
    db.add(AlertState(rule_id=rule_id, kind=kind, scope=scope, crossed=True, changed_at=now,
                      detail=detail))
    try:
        db.flush()
    except IntegrityError:  # another evaluator inserted it first: it fired there
        db.rollback()
        return False
    return True


def evaluate_account(db: Session, account_id: int, f: Figures) -> int:
    """Record this account's crossings and queue their webhooks; the number that fired."""
    rules = {r.api_key_id: r for r in db.execute(
        select(AlertRule).where(AlertRule.account_id == account_id)).scalars()}
    fired = 0
    for key in f.keys:
        rule = rules.get(key.id)
        if rule is None:
            continue
        for kind, scope, now_crossed, detail, data in _conditions(rule, key, f):
            if _transition(db, rule.id, kind, scope, now_crossed, detail, f.now):
                fired += 1
                if rule.webhook_url:
                    _enqueue(db, rule, key, f"alert.{kind}", {**data, "message": detail}, f.now)
            db.commit()  # each crossing with its webhook, in one transaction
    return fired


async def evaluate(svc: Services) -> int:
    """One round over every account with alert rules; the crossings that fired."""
    def accounts() -> list[int]:
        with svc.sessions() as db:
            return list(db.execute(select(AlertRule.account_id).distinct()).scalars())

    fired = 0
    for account_id in await run_in_threadpool(accounts):
        f = await figures(svc, account_id)

        def record(aid: int = account_id, fig: Figures = f) -> int:
            with svc.sessions() as db:
                return evaluate_account(db, aid, fig)

        fired += await run_in_threadpool(record)
    return fired


def prune_states(db: Session, now: datetime, keep_days: int = STATE_KEEP_DAYS) -> int:
    """Delete the daily-cap states of UTC days more than ``keep_days`` before ``now``'s (one
    row per rule and day otherwise piles up forever); the rows deleted. Other kinds keep their
    one row per rule and scope: it is what stops a crossing from firing twice."""
    cutoff = (now.date() - timedelta(days=keep_days)).isoformat()
    gone = rows_changed(db.execute(delete(AlertState).where(
        AlertState.kind == "daily_cap", AlertState.scope < cutoff)))
    db.commit()
    return gone


def prune_deliveries(db: Session, now: datetime, keep_days: int = DELIVERY_KEEP_DAYS) -> int:
    """Delete outbox rows delivered or given up more than ``keep_days`` ago (the log of what
    was sent stays that long); a pending row is never deleted. The rows deleted."""
    gone = rows_changed(db.execute(delete(AlertDelivery).where(
        AlertDelivery.status.in_(("delivered", "failed")),
        AlertDelivery.created_at < now - timedelta(days=keep_days))))
    db.commit()
    return gone


def banner(db: Session, account: Account, today: str) -> list[dict[str, Any]]:
    """The account's crossed thresholds (a daily-cap one only for today), for the dashboard."""
    rows = db.execute(select(AlertState).join(AlertRule, AlertRule.id == AlertState.rule_id)
                      .join(ApiKey, ApiKey.id == AlertRule.api_key_id)
                      .where(AlertRule.account_id == account.id, AlertState.crossed.is_(True),
                             ApiKey.revoked_at.is_(None))
                      .order_by(AlertState.id)).scalars()
    return [_state_json(s) for s in rows if s.kind != "daily_cap" or s.scope == today]


def rules_by_key(db: Session, account: Account) -> dict[int, dict[str, Any]]:
    keys = {k.id: k for k in db.execute(select(ApiKey).where(
        ApiKey.account_id == account.id)).scalars()}
    rules = db.execute(select(AlertRule).where(AlertRule.account_id == account.id)).scalars()
    return {r.api_key_id: rules_json(r, keys[r.api_key_id]) for r in rules}
