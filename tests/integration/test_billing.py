"""Billing with Stripe: the real SDK over HTTP against a local server that speaks Stripe's wire
format, on both stacks (SQLite + embedded Valkey; PostgreSQL + Redis)."""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from billing import METER_EVENT, UsageReport
from metering import CallSpec, Event, UsageEvent, split, write_events
from tests.helpers import DIGIT_ZERO, bearer, new_key, signup, v2_body
from tests.stripe_local import StripeLocal

SECRET = "whsec_test_local"


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


@pytest.fixture(autouse=True)
def _no_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from stripe._http_client import HTTPClient

    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0)  # the SDK's retry backoff: 0.5 s+
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0)


@pytest.fixture(scope="module")
def stripe_srv():
    with StripeLocal() as srv:
        yield srv


@pytest.fixture(scope="module")
def bill(settings, stripe_srv):
    """An app in Stripe mode on the same servers and storage as the session's app."""
    from storefront.app import create_app

    s = type(settings)(**{**settings.model_dump(),
        "stripe_api_key": stripe_srv.api_key,
        "stripe_api_base": stripe_srv.url, "stripe_webhook_secret": SECRET,
        "billing_sync_interval_s": 0, "seed_demo": True})
    with TestClient(create_app(s), client=("127.0.0.1", 50000)) as c:
        yield c


def svc(c):
    return c.app.state.services


def deliver(c, srv, event: dict, secret: str = SECRET, timestamp: int | None = None):
    payload = json.dumps(event).encode()
    return c.post("/v1/billing/webhook", content=payload, headers={
        "Stripe-Signature": srv.sign(payload, secret, timestamp),
        "Content-Type": "application/json"})


def credits(c, token) -> str:
    return c.get("/v1/billing", headers=bearer(token)).json()["credits"]


def go_postpaid(c, srv, token) -> str:
    r = c.post("/v1/billing/postpaid", headers=bearer(token))
    assert r.status_code == 201, r.text
    assert deliver(c, srv, srv.complete_checkout(r.json()["id"])).status_code == 200
    info = c.get("/v1/billing", headers=bearer(token)).json()
    assert info["postpaid"] is True and info["customer_id"]
    return info["customer_id"]


def sync(c):
    return c.portal.call(svc(c).billing.sync)


def ledger_paid(c, account_email: str) -> tuple[int, int]:
    from storefront.models import Account

    with svc(c).sessions() as db:
        aid = db.execute(select(Account.id).where(Account.email == account_email)).scalar_one()
        n, total = db.execute(select(func.count(), func.coalesce(func.sum(UsageEvent.price), 0))
                              .where(UsageEvent.account_id == aid,
                                     UsageEvent.kind == "paid")).one()
    return int(n), int(total)


def test_ledger_only_mode_refuses_stripe_operations_clearly(client):
    _, token = signup(client, "buyer")
    info = client.get("/v1/billing", headers=bearer(token)).json()
    assert info["mode"] == "ledger" and info["postpaid"] is False
    r = client.post("/v1/billing/checkout", headers=bearer(token), json={"amount": "10.00"})
    assert r.status_code == 409 and error_of(r)["code"] == "stripe_not_configured"
    assert client.post("/v1/billing/webhook", content=b"{}").status_code == 409


def test_checkout_grants_credits_exactly_once(bill, stripe_srv):
    _, token = signup(bill, "buyer")
    r = bill.post("/v1/billing/checkout", headers=bearer(token), json={"amount": "20.00"})
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["id"].startswith("cs_") and session["url"].startswith(stripe_srv.url)
    assert credits(bill, token) == "0.00"  # nothing before Stripe confirms payment

    event = stripe_srv.complete_checkout(session["id"])
    first = deliver(bill, stripe_srv, event)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    assert credits(bill, token) == "20.00"
    again = deliver(bill, stripe_srv, event)  # Stripe retries the same event
    assert again.status_code == 200 and again.json()["duplicate"] is True
    resent = dict(event, id=f"evt_{uuid.uuid4().hex[:24]}")  # same session, new event id
    assert deliver(bill, stripe_srv, resent).status_code == 200
    assert credits(bill, token) == "20.00"

    # a second checkout reuses the buyer's Stripe Customer
    customers = stripe_srv.count("/v1/customers", "POST")
    r = bill.post("/v1/billing/checkout", headers=bearer(token), json={"amount": "5.00"})
    assert r.status_code == 201
    assert stripe_srv.count("/v1/customers", "POST") == customers
    deliver(bill, stripe_srv, stripe_srv.complete_checkout(r.json()["id"]))
    assert credits(bill, token) == "25.00"


@pytest.mark.parametrize("amount,code", [("0.10", "invalid_amount"), ("abc", "invalid_amount"),
                                         ("10.001", "invalid_amount"),
                                         ("20000.00", "invalid_amount")])
def test_checkout_validates_the_amount(bill, amount, code):
    _, token = signup(bill, "buyer")
    r = bill.post("/v1/billing/checkout", headers=bearer(token), json={"amount": amount})
    assert r.status_code == 422 and error_of(r)["code"] == code


def test_checkout_when_stripe_is_down_is_503_and_records_nothing(bill, stripe_srv):
    from billing import CheckoutRecord
    from storefront.models import Account

    addr, token = signup(bill, "buyer")
    stripe_srv.fail_next("/v1/checkout/sessions", status=500, count=10)
    r = bill.post("/v1/billing/checkout", headers=bearer(token), json={"amount": "10.00"})
    assert r.status_code == 503 and error_of(r)["code"] == "stripe_unavailable"
    stripe_srv.clear_faults()
    with svc(bill).sessions() as db:
        aid = db.execute(select(Account.id).where(Account.email == addr)).scalar_one()
        assert db.execute(select(func.count()).select_from(CheckoutRecord)
                          .where(CheckoutRecord.account_id == aid)).scalar_one() == 0
    assert credits(bill, token) == "0.00"


def test_webhook_signature_is_verified_on_the_raw_body(bill, stripe_srv):
    _, token = signup(bill, "buyer")
    r = bill.post("/v1/billing/checkout", headers=bearer(token), json={"amount": "10.00"})
    event = stripe_srv.complete_checkout(r.json()["id"])
    for bad in (deliver(bill, stripe_srv, event, secret="whsec_wrong"),
                deliver(bill, stripe_srv, event, timestamp=int(time.time()) - 3600),
                bill.post("/v1/billing/webhook", content=json.dumps(event))):
        assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_signature"
    payload = json.dumps(event).encode()
    tampered = payload.replace(b'"amount_total": 1000', b'"amount_total": 9000')
    assert tampered != payload
    r = bill.post("/v1/billing/webhook", content=tampered,
                  headers={"Stripe-Signature": stripe_srv.sign(payload, SECRET)})
    assert r.status_code == 400
    junk = b"not json"
    r = bill.post("/v1/billing/webhook", content=junk,
                  headers={"Stripe-Signature": stripe_srv.sign(junk, SECRET)})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_payload"
    assert credits(bill, token) == "0.00"


def test_postpaid_buyer_calls_without_credit_and_usage_reaches_stripe_once(bill, stripe_srv):
    addr, token = signup(bill, "buyer")
    key = new_key(bill, token)
    call = {"headers": bearer(key), "json": v2_body([DIGIT_ZERO])}
    for _ in range(5):  # the trial
        assert bill.post("/v2/models/handwritten-digits/infer", **call).status_code == 200
    r = bill.post("/v2/models/handwritten-digits/infer", **call)
    assert r.status_code == 402  # no credit, no card

    customer = go_postpaid(bill, stripe_srv, token)
    svc(bill).keys._cache.clear()  # this worker's key cache would see it within 5 s anyway
    for _ in range(12):
        assert bill.post("/v2/models/handwritten-digits/infer", **call).status_code == 200
    svc(bill).flusher.drain()
    calls, owed = ledger_paid(bill, addr)
    assert (calls, owed) == (12, 12 * 2000)
    st = bill.get("/v1/billing/statement", headers=bearer(token)).json()
    assert st["awaiting_report_micro"] == owed and st["billed_to_card"]["amount_micro"] == 0

    # Stripe down: nothing is lost, nothing is counted
    stripe_srv.fail_next("/v1/billing/meter_events", status=500, count=20)
    result = sync(bill)
    assert result.failed == 1 and stripe_srv.meter_totals(METER_EVENT).get(customer, 0) == 0
    stripe_srv.clear_faults()
    # Stripe counted it but every reply was lost: the sync is interrupted, then rerun
    stripe_srv.fail_next("/v1/billing/meter_events", status=500, count=20,
                         after_processing=True)
    assert sync(bill).failed == 1
    stripe_srv.clear_faults()
    assert stripe_srv.meter_totals(METER_EVENT)[customer] == owed
    result = sync(bill)
    assert result.failed == 0 and result.reports_sent == 1
    assert stripe_srv.meter_totals(METER_EVENT)[customer] == owed  # still once
    assert sync(bill).reports_sent == 0  # nothing new
    scrape = bill.get("/metrics").text
    assert 'aimarket_billing_usage_reports{status="sent"}' in scrape
    sent = [line for line in scrape.splitlines()
            if line.startswith("aimarket_billing_usage_reported_micro_usd ")]
    assert sent and float(sent[0].split()[1]) >= owed

    # the card pays: the balance is whole again; the statement matches Stripe
    assert credits(bill, token) == "0.00"
    st = bill.get("/v1/billing/statement", headers=bearer(token)).json()
    assert st["billed_to_card"]["amount_micro"] == owed == st["billed_to_card"]["calls"] * 2000
    csv_text = bill.get("/v1/billing/statement?format=csv", headers=bearer(token)).text
    assert csv_text.splitlines()[0].startswith("month,listing,kind,calls")
    month = datetime.now(UTC).strftime("%Y-%m")
    gw = svc(bill).billing.stripe
    start = int(datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0).timestamp())
    end = (int(time.time()) // 60 + 2) * 60
    assert gw.meter_total(customer, start, end) == owed
    assert st["month"] == month


def test_edge_calls_of_a_postpaid_buyer_reach_stripe_like_hosted_ones(bill, stripe_srv):
    from storefront.models import Account

    addr, token = signup(bill, "buyer")
    key = new_key(bill, token)
    customer = go_postpaid(bill, stripe_srv, token)
    svc(bill).keys._cache.clear()
    call = {"headers": bearer(key), "json": v2_body([DIGIT_ZERO])}
    for _ in range(7):  # 5 trial calls, then 2 paid ones
        assert bill.post("/v2/models/handwritten-digits/infer", **call).status_code == 200
    svc(bill).flusher.drain()
    with svc(bill).sessions() as db:
        aid = db.execute(select(Account.id).where(Account.email == addr)).scalar_one()
    edge = 30 * 1500  # a kit's verified receipts: 30 calls at 0.0015 USD, one ledger event
    share, fee = split(edge, 2000)
    write_events(svc(bill).engine, [Event(f"edge-{uuid.uuid4().hex}", aid, None, 1, 1, 1,
                                          "edge", edge, share, fee, 0, int(time.time() * 1000))])
    assert sync(bill).reports_sent == 1
    assert stripe_srv.meter_totals(METER_EVENT)[customer] == 2 * 2000 + edge


def test_credit_line_bounds_unreported_postpaid_usage(bill, stripe_srv):
    from billing import BillingProfile
    from storefront.models import Account

    addr, token = signup(bill, "buyer")
    go_postpaid(bill, stripe_srv, token)
    with svc(bill).sessions() as db:  # an operator lowers this buyer's line to 0.004 USD
        aid = db.execute(select(Account.id).where(Account.email == addr)).scalar_one()
        db.get(BillingProfile, aid).credit_line = 4000
        db.commit()
    svc(bill).keys._cache.clear()
    key = new_key(bill, token)
    codes = [bill.post("/v2/models/handwritten-digits/infer", headers=bearer(key),
                       json=v2_body()).status_code for _ in range(5 + 3)]
    assert codes == [200] * 5 + [200, 200, 402]  # trial, then 2 x 0.002 on the line
    svc(bill).flusher.drain()
    assert sync(bill).failed == 0  # reported: the line is free again
    assert bill.post("/v2/models/handwritten-digits/infer", headers=bearer(key),
                     json=v2_body()).status_code == 200
    # a key's spend cap still applies to postpaid calls
    r = bill.patch(f"/v1/keys/{_key_id(bill, token)}", headers=bearer(token),
                   json={"spend_cap_day": "0.006"})
    assert r.status_code == 200, r.text
    assert bill.post("/v2/models/handwritten-digits/infer", headers=bearer(key),
                     json=v2_body()).status_code == 402


def _key_id(c, token) -> int:
    return c.get("/v1/keys", headers=bearer(token)).json()["items"][0]["id"]


def _month_ago(months: int) -> datetime:
    day = datetime.now(UTC).replace(day=15, hour=12)
    for _ in range(months):
        day = (day.replace(day=1) - timedelta(days=1)).replace(day=15)
    return day


def _events(seller_id: int, n: int, price: int, when: datetime) -> list[Event]:
    share, fee = split(price, 2000)
    return [Event(f"t-{uuid.uuid4().hex}", 999_999, None, 1, 1, seller_id, "paid", price,
                  share, fee, 10, int(when.timestamp() * 1000)) for _ in range(n)]


def test_connect_onboarding_and_payouts_pay_each_period_once(bill, stripe_srv):
    from storefront.models import Account

    addr, token = signup(bill, "seller")
    r = bill.post("/v1/billing/connect", headers=bearer(token))
    assert r.status_code == 201, r.text
    acct = r.json()["account_id"]
    assert r.json()["url"] and r.json()["payouts_enabled"] is False
    again = bill.post("/v1/billing/connect", headers=bearer(token)).json()
    assert again["account_id"] == acct  # one Connect account per seller
    with svc(bill).sessions() as db:
        seller_id = db.execute(select(Account.id).where(Account.email == addr)).scalar_one()
    engine = svc(bill).engine
    write_events(engine, _events(seller_id, 3, 1_000_003, _month_ago(2)))
    write_events(engine, _events(seller_id, 7, 1_234_567, _month_ago(1)))
    older, period = f"{_month_ago(2):%Y-%m}", f"{_month_ago(1):%Y-%m}"
    billing = svc(bill).billing

    def mine(results, p=period):
        return next(r for r in results if r.seller_id == seller_id and r.period == p)

    assert mine(billing.payouts(older), older).status == "not_onboarded"
    assert deliver(bill, stripe_srv, stripe_srv.complete_onboarding(acct)).status_code == 200
    # Stripe makes the transfers but every reply is lost (3 tries per transfer)
    stripe_srv.fail_next("/v1/transfers", status=500, count=6, after_processing=True,
                         method="POST")
    lost = billing.payouts(period)
    assert mine(lost).status == mine(lost, older).status == "pending"
    paid = billing.payouts(period)  # the rerun finds both transfers, makes none
    share_old = 3 * split(1_000_003, 2000)[0]
    share = 7 * split(1_234_567, 2000)[0]
    assert mine(paid, older).status == mine(paid).status == "paid", paid
    assert mine(paid, older).amount == share_old - share_old % 10_000
    # what the older payout could not pay (under a cent) carries into this one
    owed = share_old + share - mine(paid, older).amount
    assert mine(paid).amount == owed - owed % 10_000 and mine(paid).earned == share
    transfers = [t for t in stripe_srv.transfers if t["destination"] == acct]
    assert sorted(t["amount"] for t in transfers) == sorted(
        [mine(paid, older).amount // 10_000, mine(paid).amount // 10_000])
    assert mine(billing.payouts(period)).transfer_id == mine(paid).transfer_id
    assert len([t for t in stripe_srv.transfers if t["destination"] == acct]) == 2
    st = bill.get(f"/v1/billing/seller-statement?month={period}", headers=bearer(token)).json()
    assert st["seller_share_micro"] == share and st["payout"]["status"] == "paid"
    for bad in ("2026-13", "0000-01", "9999-12"):
        r = bill.get(f"/v1/billing/seller-statement?month={bad}", headers=bearer(token))
        assert r.status_code == 422, bad
    r = bill.get("/v1/billing/statement?month=0000-01", headers=bearer(token))
    assert r.status_code == 422


def test_reconciliation_over_10000_random_calls(bill, stripe_srv):
    """Random paid calls through the real reservation path (Lua, stream, flusher) for five
    postpaid buyers on four listings at random prices; then one sync."""
    from storefront.models import Account

    rng = random.Random(7)
    buyers = []
    for _ in range(5):
        addr, token = signup(bill, "buyer")
        customer = go_postpaid(bill, stripe_srv, token)
        with svc(bill).sessions() as db:
            aid = db.execute(select(Account.id).where(Account.email == addr)).scalar_one()
        buyers.append((aid, customer))
    listings = [(100 + i, 500 + i) for i in range(4)]  # (listing id, seller id)
    meter = svc(bill).meter
    svc(bill).flusher.drain()
    sync(bill)  # earlier tests' usage goes first
    before = len(stripe_srv.requests)

    async def run() -> int:
        ok = 0
        for _ in range(10_000):
            aid, _c = rng.choice(buyers)
            lid, sid = rng.choice(listings)
            spec = CallSpec(request_id=uuid.uuid4().hex, account_id=aid, api_key_id=None,
                            listing_id=lid, listing_version_id=lid, seller_id=sid,
                            price=rng.randint(1, 50_000), trial_calls=0,
                            credit_line=10**12)
            res = await meter.reserve(spec)
            assert res.ok
            ok += await meter.commit(res, latency_us=50)
        return ok

    assert bill.portal.call(run) == 10_000
    svc(bill).flusher.drain()

    async def two_syncs():  # e.g. the app's timer and an operator's `aimarket billing sync`
        import asyncio

        billing = svc(bill).billing
        return await asyncio.gather(billing.sync(), billing.sync())

    stripe_srv.meter_event_delay_s = 0.05  # widen each call's in-flight window
    try:
        first, second = bill.portal.call(two_syncs)
    finally:
        stripe_srv.meter_event_delay_s = 0
    assert stripe_srv.concurrency_violations == []  # one call per customer and meter at once
    assert first.failed == second.failed == 0
    assert first.calls_reported + second.calls_reported == 10_000
    stripe_calls = len(stripe_srv.requests) - before
    totals = stripe_srv.meter_totals(METER_EVENT)
    with svc(bill).sessions() as db:
        for aid, customer in buyers:
            owed, n = db.execute(select(func.sum(UsageEvent.price), func.count())
                                 .where(UsageEvent.account_id == aid,
                                        UsageEvent.kind == "paid")).one()
            assert totals[customer] == owed
            reports = db.execute(select(func.sum(UsageReport.value)).where(
                UsageReport.account_id == aid, UsageReport.status == "sent")).scalar_one()
            assert reports == owed
        price, share, fee, n = db.execute(
            select(func.sum(UsageEvent.price), func.sum(UsageEvent.seller_share),
                   func.sum(UsageEvent.platform_fee), func.count())
            .where(UsageEvent.account_id.in_([a for a, _ in buyers]))).one()
        assert n == 10_000 and price == share + fee
        bad = db.execute(select(func.count()).where(
            UsageEvent.account_id.in_([a for a, _ in buyers]),
            UsageEvent.price != UsageEvent.seller_share + UsageEvent.platform_fee)).scalar_one()
        assert bad == 0
    print(f"\nStripe API calls for 10,000 paid calls: {stripe_calls} "
          f"({stripe_calls / 10:.2f} per 1,000)")
    assert stripe_calls == len(buyers)  # one aggregated meter event per buyer and month


def test_cli_billing_sync_and_payouts(bill, stripe_srv, settings):
    import os
    import subprocess
    import sys

    env = {**os.environ, **settings.as_env(), "AIMARKET_STRIPE_API_KEY": stripe_srv.api_key,
           "AIMARKET_STRIPE_API_BASE": stripe_srv.url}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "storefront.cli", "billing", *args],
                              env={**env, **extra}, capture_output=True, text=True, timeout=120)

    _, token = signup(bill, "buyer")
    customer = go_postpaid(bill, stripe_srv, token)
    svc(bill).keys._cache.clear()
    key = new_key(bill, token)
    for _ in range(5 + 3):
        assert bill.post("/v2/models/handwritten-digits/infer", headers=bearer(key),
                         json=v2_body()).status_code == 200
    done = cli("sync")  # drains the ledger stream itself, then reports
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["reports_sent"] >= 1
    assert stripe_srv.meter_totals(METER_EVENT)[customer] == 3 * 2000
    bad = cli("payouts", "--period", "2026-13")
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr
    off = cli("sync", AIMARKET_STRIPE_API_KEY="")
    assert off.returncode != 0


def _admin(c) -> str:
    r = c.post("/v1/auth/token",
               data={"username": "admin@test.local", "password": "admin-pass-123"})
    return r.json()["access_token"]


def test_a_cancelled_subscription_closes_the_credit_line(bill, stripe_srv):
    addr, token = signup(bill, "buyer")
    customer = go_postpaid(bill, stripe_srv, token)
    assert bill.get("/v1/billing", headers=bearer(token)).json()["credit_line"] == "50.00"
    event = {"id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event",
             "type": "customer.subscription.deleted", "created": int(time.time()),
             "data": {"object": {"id": "sub_x", "object": "subscription",
                                 "customer": customer, "status": "canceled"}}}
    assert deliver(bill, stripe_srv, event).json()["handled"] is True
    info = bill.get("/v1/billing", headers=bearer(token)).json()
    assert info["credit_line"] == "0.00"
    svc(bill).keys._cache.clear()
    key = new_key(bill, token)
    codes = [bill.post("/v2/models/handwritten-digits/infer", headers=bearer(key),
                       json=v2_body()).status_code for _ in range(6)]
    assert codes == [200] * 5 + [402]  # the trial, then prepaid credit is needed again
    r = bill.post("/v1/admin/credits", headers=bearer(_admin(bill)),
                  json={"account_email": addr, "amount": "1.00"})
    assert r.status_code == 201, r.text
    for _ in range(3):
        assert bill.post("/v2/models/handwritten-digits/infer", headers=bearer(key),
                         json=v2_body()).status_code == 200
    svc(bill).flusher.drain()
    before = stripe_srv.meter_totals(METER_EVENT).get(customer, 0)
    assert sync(bill).failed == 0
    assert stripe_srv.meter_totals(METER_EVENT).get(customer, 0) == before  # not reported
    assert credits(bill, token) == "0.994"  # paid from credit, not given back
    r = bill.post("/v1/billing/postpaid", headers=bearer(token))  # sign up again
    assert r.status_code == 201, r.text
    assert bill.post("/v1/billing/postpaid", headers=bearer(token)).json()["id"] == \
        r.json()["id"]  # one open sign-up, not a second subscription


def test_pages_send_buyers_to_checkout_and_sellers_to_onboarding(bill, stripe_srv):
    import re

    from tests.helpers import email

    def login(addr: str) -> str:
        html = bill.get("/login").text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
        r = bill.post("/login", data={"email": addr, "password": "password-123", "csrf": csrf},
                      follow_redirects=False)
        assert r.status_code == 303, r.text
        return csrf

    bill.cookies.clear()
    try:
        addr, token = signup(bill, "buyer")
        csrf = login(addr)
        page = bill.get("/account").text
        assert "Buy credits" in page and "Pay as you go" in page
        r = bill.post("/account/credits", data={"amount": "15.00", "csrf": csrf},
                      follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith(stripe_srv.url)
        sid = r.headers["location"].rsplit("/", 1)[1]
        deliver(bill, stripe_srv, stripe_srv.complete_checkout(sid))
        assert "15.00 USD" in bill.get("/account").text
        r = bill.post("/account/credits", data={"amount": "0.01", "csrf": csrf},
                      follow_redirects=False)
        assert r.status_code == 303 and "error=" in r.headers["location"]
        r = bill.post("/account/credits", data={"amount": "15.00"}, follow_redirects=False)
        assert r.status_code == 403  # no CSRF token

        bill.cookies.clear()
        seller = email("seller")
        assert bill.post("/v1/accounts", json={"email": seller, "password": "password-123",
                                               "role": "seller"}).status_code == 201
        csrf = login(seller)
        assert "Set up payouts with Stripe" in bill.get("/seller").text
        r = bill.post("/seller/connect", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith(stripe_srv.url)
    finally:
        bill.cookies.clear()


def test_an_export_licence_paid_by_card_is_granted_once(bill, stripe_srv):
    """Stripe mode: "Pay by card" on the model page opens a Checkout Session for the licence's
    price; the webhook credits the payment once and buys the licence from it (the seller's
    share in the ledger like any purchase); replays grant and charge nothing more."""
    import re

    from sqlalchemy import text

    from billing import CheckoutRecord

    slug = "wine-cultivar"
    bill.cookies.clear()
    try:
        addr, token = signup(bill, "buyer")
        login_page = bill.get("/login").text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', login_page).group(1)
        assert bill.post("/login", data={"email": addr, "password": "password-123",
                                         "csrf": csrf}, follow_redirects=False
                         ).status_code == 303
        page = bill.get(f"/models/{slug}").text
        assert "Pay by card (8.00 USD)" in page
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        r = bill.post(f"/models/{slug}/purchase", data={"action": "card"},
                      follow_redirects=False)
        assert r.status_code == 403  # no CSRF token
        r = bill.post(f"/models/{slug}/purchase", data={"action": "card", "csrf": csrf},
                      follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith(stripe_srv.url)
        sid = r.headers["location"].rsplit("/", 1)[1]
        with svc(bill).sessions() as db:
            rec = db.get(CheckoutRecord, sid)
            assert (rec.purpose, rec.item, rec.amount) == ("licence", slug, 8_000_000)
        assert stripe_srv.sessions[sid]["success_url"].endswith(
            f"/models/{slug}?checkout=success")
        back = bill.get(f"/models/{slug}", params={"checkout": "success"}).text
        assert "Pay by card" in back and "reload this page in a moment" in back  # not yet

        event = stripe_srv.complete_checkout(sid)
        first = deliver(bill, stripe_srv, event)
        assert first.status_code == 200 and first.json()["handled"] is True, first.text
        page = bill.get(f"/models/{slug}", params={"checkout": "success"}).text
        assert "You hold the export licence of this model" in page
        assert "your card payment bought the export licence" in page
        assert credits(bill, token) == "0.00"  # credited 8.00, then the licence bought
        assert deliver(bill, stripe_srv, event).json()["duplicate"] is True  # Stripe retries
        resent = dict(event, id=f"evt_{uuid.uuid4().hex[:24]}")  # same session, new event
        assert deliver(bill, stripe_srv, resent).status_code == 200
        assert credits(bill, token) == "0.00"
        me = bill.get("/v1/account", headers=bearer(token)).json()["id"]
        svc(bill).flusher.drain()
        with svc(bill).engine.connect() as conn:
            bought = conn.execute(text("SELECT count(*) FROM purchases WHERE buyer_id = :a"),
                                  {"a": me}).scalar_one()
            credited = conn.execute(text(
                "SELECT count(*), sum(amount) FROM credit_entries WHERE account_id = :a "
                "AND reason = 'checkout'"), {"a": me}).one()
            charged = conn.execute(text(
                "SELECT count(*), sum(price) FROM usage_events WHERE account_id = :a "
                "AND kind = 'export'"), {"a": me}).one()
        assert bought == 1 and tuple(credited) == (1, 8_000_000)
        assert tuple(charged) == (1, 8_000_000)
        r = bill.post("/v1/exports", headers=bearer(token), json={"slug": slug,
                                                                 "target": "onnx"})
        assert r.status_code == 201, r.text
        # holding the licence, the page offers no second payment
        r = bill.post(f"/models/{slug}/purchase", data={"action": "card", "csrf": csrf},
                      follow_redirects=False)
        assert r.status_code == 303 and "already%20hold" in r.headers["location"]
    finally:
        bill.cookies.clear()
