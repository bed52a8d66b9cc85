"""Usage alerts (issue 17): a key's thresholds fire once per crossing, as a signed webhook to a
real local receiver (retried after a failure) and as the dashboard's banner; URLs are checked;
nobody else's key can be read or changed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from metering import utcnow
from storefront import alert_sender, alerts
from storefront.webhook_signing import HEADER, verify
from tests.helpers import bearer, grant, signup, v2_body

SLUG = "handwritten-digits"


class Receiver:
    """A real HTTP endpoint on loopback that answers the scripted statuses (then 200)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.got.append((dict(self.headers.items()), body))
                self.send_response(outer.answers.pop(0) if outer.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/aimarket"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _round(client: Any, now: Any = None) -> tuple[int, int]:
    """One alerts round as the app's timer runs it: (crossings fired, webhooks delivered)."""
    svc = client.app.state.services
    client.app.state.services.flusher.drain()
    fired = client.portal.call(alerts.evaluate, svc)
    return fired, client.portal.call(alert_sender.send_due, svc, now)


def _calls(client: Any, key: str, n: int) -> None:
    for _ in range(n):
        r = client.post(f"/v2/models/{SLUG}/infer", json=v2_body(), headers=bearer(key))
        assert r.status_code == 200, r.text


def test_daily_cap_alert_fires_once_signed_with_the_secret_shown_once(client, receiver):
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "5.00")
    model = client.get(f"/v1/models/{SLUG}").json()
    trial, price = model["trial_calls"], Decimal(model["price_per_call"])
    cap = price * 10
    key = client.post("/v1/keys", headers=bearer(buyer),
                      json={"name": "ci", "spend_cap_day": str(cap)}).json()
    r = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer),
                   json={"daily_cap_percent": 80, "webhook_url": receiver.url})
    assert r.status_code == 200, r.text
    secret = r.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    again = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer),
                       json={"daily_cap_percent": 80, "webhook_url": receiver.url}).json()
    assert "webhook_secret" not in again and again["has_webhook_secret"]  # shown once
    got = client.get(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer)).json()
    assert secret not in json.dumps(got) and got["daily_cap_percent"] == 80

    _calls(client, key["key"], trial + 7)  # 70% of the cap: below the threshold
    assert _round(client) == (0, 0) and receiver.got == []
    _calls(client, key["key"], 1)  # 80%
    assert _round(client) == (1, 1)
    _calls(client, key["key"], 1)  # 90%: still the same crossing
    assert _round(client) == (0, 0)
    assert len(receiver.got) == 1

    headers, body = receiver.got[0]
    event = json.loads(body)
    assert event["type"] == "alert.daily_cap" and event["key"]["id"] == key["id"]
    assert event["data"]["threshold_percent"] == 80
    assert Decimal(event["data"]["spent"]) == price * 8
    assert verify(secret, body, headers[HEADER])
    assert not verify(secret, body.replace(b'"threshold_percent":80', b'"threshold_percent":8'),
                      headers[HEADER])  # a tampered body fails
    assert not verify("whsec_" + "0" * 64, body, headers[HEADER])  # so does another secret
    crossed = client.get(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer)).json()
    assert [c["kind"] for c in crossed["crossed"]] == ["daily_cap"]
    assert crossed["deliveries"][0]["status"] == "delivered"
    page = client.get("/account", headers={"Cookie": f"am_session={buyer}"})
    assert "of its" in page.text and 'id="alert-banner"' in page.text


def test_credits_alert_rearms_after_a_top_up_and_fires_again(client, receiver):
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    key = client.post("/v1/keys", headers=bearer(buyer), json={"name": "low"}).json()
    secret = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer), json={
        "credits_below": "1.50", "webhook_url": receiver.url}).json()["webhook_secret"]
    assert _round(client) == (1, 1)  # 1.00 < 1.50
    assert _round(client) == (0, 0)
    grant(client, addr, "1.00")  # 2.00: back above, re-armed
    assert _round(client) == (0, 0)
    assert client.get(f"/v1/keys/{key['id']}/alerts",
                      headers=bearer(buyer)).json()["crossed"] == []
    model = client.get(f"/v1/models/{SLUG}").json()
    spend = Decimal("0.51")
    n = model["trial_calls"] + int(spend / Decimal(model["price_per_call"])) + 1
    _calls(client, key["key"], n)  # below 1.50 again
    assert _round(client) == (1, 1)
    kinds = [(e["type"], e["data"]["threshold"]) for e in receiver.events()]
    assert kinds == [("alert.credits", "1.50")] * 2
    assert all(verify(secret, body, h[HEADER]) for h, body in receiver.got)


def test_trial_used_up_alert_per_listing(client, receiver):
    _, buyer = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(buyer), json={"name": "trial"}).json()
    client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer),
               json={"trial_used_up": True, "webhook_url": receiver.url})
    trial = client.get(f"/v1/models/{SLUG}").json()["trial_calls"]
    _calls(client, key["key"], trial - 1)
    assert _round(client) == (0, 0)
    _calls(client, key["key"], 1)
    assert _round(client) == (1, 1)
    assert receiver.events()[0]["data"] == {
        "slug": SLUG, "trial_calls": trial, "trial_used": trial,
        "message": f"the {trial} free trial calls of {SLUG} are used up"}


def test_a_failed_delivery_is_retried_with_backoff_then_delivered(client, receiver):
    _, buyer = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(buyer), json={"name": "hook"}).json()
    secret = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer),
                        json={"webhook_url": receiver.url}).json()["webhook_secret"]
    receiver.answers = [500]
    r = client.post(f"/v1/keys/{key['id']}/alerts/test", headers=bearer(buyer))
    assert r.status_code == 202, r.text
    svc = client.app.state.services
    assert client.portal.call(alert_sender.send_due, svc, None) == 0  # the receiver's 500
    state = client.get(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer)).json()
    assert state["deliveries"][0] | {"created_at": None} == {
        "event_id": r.json()["event_id"], "status": "pending", "attempts": 1,
        "last_error": "HTTP 500", "created_at": None}
    assert client.portal.call(alert_sender.send_due, svc, None) == 0  # not due yet: backoff
    assert len(receiver.got) == 1
    later = utcnow() + timedelta(seconds=svc.settings.alert_retry_base_s * 2)
    assert client.portal.call(alert_sender.send_due, svc, later) == 1
    assert len(receiver.got) == 2 and receiver.got[0][1] == receiver.got[1][1]  # same event
    assert all(verify(secret, body, h[HEADER]) for h, body in receiver.got)
    last = client.get(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer)).json()
    assert last["deliveries"][0]["status"] == "delivered"
    assert last["deliveries"][0]["attempts"] == 2


def test_delivery_gives_up_after_the_last_attempt(client, receiver):
    _, buyer = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(buyer), json={"name": "down"}).json()
    client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer),
               json={"webhook_url": receiver.url})
    svc = client.app.state.services
    tries = svc.settings.alert_max_attempts
    receiver.answers = [503] * (tries + 1)
    client.post(f"/v1/keys/{key['id']}/alerts/test", headers=bearer(buyer))
    for n in range(tries + 1):
        far = utcnow() + timedelta(days=n + 1)  # past any backoff (capped at a day, +20%)
        client.portal.call(alert_sender.send_due, svc, far + timedelta(hours=5 * n))
    last = client.get(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer)).json()
    assert last["deliveries"][0]["status"] == "failed"
    assert last["deliveries"][0]["attempts"] == tries == len(receiver.got)


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "http://example.com/hook", "javascript:alert(1)",
    "https://user:pw@example.com/hook", "https://10.0.0.5/hook", "https://169.254.169.254/",
    "not a url", "https:///nohost"])
def test_a_bad_webhook_url_is_a_422_envelope(client, url):
    _, buyer = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(buyer), json={"name": "x"}).json()
    r = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer),
                   json={"webhook_url": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_webhook_url"


def test_bad_thresholds_and_no_webhook_are_refused(client):
    _, buyer = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(buyer), json={"name": "x"}).json()
    for body in ({"daily_cap_percent": 0}, {"daily_cap_percent": 101},
                 {"credits_below": "abc"}, {"credits_below": "-1.00"}):
        r = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer), json=body)
        assert r.status_code == 422 and "error" in r.json(), (body, r.text)
    r = client.post(f"/v1/keys/{key['id']}/alerts/test", headers=bearer(buyer))
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_webhook_url"


def test_another_accounts_key_alerts_are_not_found(client, receiver):
    _, owner = signup(client, "buyer")
    _, other = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(owner), json={"name": "mine"}).json()
    client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(owner),
               json={"webhook_url": receiver.url})
    path = f"/v1/keys/{key['id']}/alerts"
    for method, url, body in (("GET", path, None), ("PUT", path, {"webhook_url": receiver.url}),
                              ("POST", path + "/test", None)):
        r = client.request(method, url, headers=bearer(other), json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"
        assert receiver.url not in r.text
        assert client.request(method, url, json=body).status_code == 401
    assert client.get(path, headers=bearer(owner)).json()["webhook_url"] == receiver.url


def test_a_round_prunes_daily_cap_states_of_past_days_and_keeps_the_rest(client):
    """One daily-cap state per rule and UTC day would pile up forever: the sender's round
    deletes those of days older than ``STATE_KEEP_DAYS``; credits and trial states (what
    stops a crossing from firing twice) stay, and so does today's banner."""
    from sqlalchemy import select

    from storefront.models import AlertRule, AlertState

    _, buyer = signup(client, "buyer")
    key = client.post("/v1/keys", headers=bearer(buyer),
                      json={"name": "old", "spend_cap_day": "1.00"}).json()
    # no thresholds set: the round's evaluation leaves the states written here as they are
    r = client.put(f"/v1/keys/{key['id']}/alerts", headers=bearer(buyer), json={})
    assert r.status_code == 200, r.text
    svc = client.app.state.services
    now = utcnow()
    day = [(now.date() - timedelta(days=n)).isoformat() for n in range(12)]
    keep = alerts.STATE_KEEP_DAYS
    with svc.sessions() as db:
        rule = db.execute(select(AlertRule).where(AlertRule.api_key_id == key["id"])).scalar_one()
        for n in (0, 1, keep, keep + 1, 11):
            db.add(AlertState(rule_id=rule.id, kind="daily_cap", scope=day[n], crossed=True,
                              changed_at=now - timedelta(days=n), detail=f"cap on {day[n]}"))
        db.add(AlertState(rule_id=rule.id, kind="credits", scope="", crossed=True,
                          changed_at=now - timedelta(days=30), detail="credits long ago"))
        db.add(AlertState(rule_id=rule.id, kind="trial", scope=SLUG, crossed=True,
                          changed_at=now - timedelta(days=30), detail="trial long ago"))
        db.commit()
        rule_id = rule.id

    client.portal.call(alert_sender.run_round, svc, now)

    with svc.sessions() as db:
        left = sorted((s.kind, s.scope) for s in db.execute(
            select(AlertState).where(AlertState.rule_id == rule_id)).scalars())
    assert left == sorted([("daily_cap", day[0]), ("daily_cap", day[1]),
                           ("daily_cap", day[keep]), ("credits", ""), ("trial", SLUG)])
    page = client.get("/account", headers={"Cookie": f"am_session={buyer}"}).text
    assert f"cap on {day[0]}" in page and "trial long ago" in page
