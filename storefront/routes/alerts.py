"""Usage alerts of an API key: thresholds, the signed webhook (secret shown once), a test."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import alerts
from ..alerts import AlertRules
from ..deps import Buyer, Id, ServicesDep, SessionDep

router = APIRouter(tags=["keys"])


@router.get("/v1/keys/{key_id}/alerts")
def get_alerts(key_id: Id, account: Buyer, db: SessionDep) -> dict[str, Any]:
    """The key's thresholds, the ones crossed now, and its recent webhook deliveries."""
    return alerts.get_rules(db, account, key_id)


@router.put("/v1/keys/{key_id}/alerts")
def put_alerts(key_id: Id, body: AlertRules, account: Buyer, db: SessionDep,
               svc: ServicesDep) -> dict[str, Any]:
    """Set the thresholds and webhook URL; a new webhook secret is answered this once."""
    return alerts.put_rules(db, svc, account, key_id, body)


@router.post("/v1/keys/{key_id}/alerts/test", status_code=202)
def test_alert(key_id: Id, account: Buyer, db: SessionDep) -> dict[str, Any]:
    """Queue a signed ``alert.test`` event to the key's webhook."""
    return alerts.queue_test(db, account, key_id)
