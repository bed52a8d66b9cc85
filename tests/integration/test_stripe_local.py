"""StripeLocal answers the official ``stripe`` SDK over real HTTP with Stripe's semantics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import stripe
from stripe._http_client import HTTPClient

from tests.stripe_local import StripeLocal

MINUTE = 60


@pytest.fixture
def srv() -> Iterator[StripeLocal]:
    with StripeLocal() as s:
        yield s


@pytest.fixture(autouse=True)
def _no_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's retry backoff is 0.5 s+; tests stay fast.
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0)


def _client(srv: StripeLocal, retries: int = 0, key: str | None = None) -> stripe.StripeClient:
    return stripe.StripeClient(
        key or srv.api_key,
        base_addresses={"api": srv.url, "connect": srv.url, "files": srv.url,
                        "meter_events": srv.url},
        max_network_retries=retries,
    )


def _meter(client: stripe.StripeClient, event_name: str = "api_calls"):
    return client.v1.billing.meters.create({
        "display_name": "API calls", "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
    })


def _event(client, cid: str, value: int, ident: str, *, event_name: str = "api_calls",
           ts: int | None = None, key: str | None = None):
    params = {"event_name": event_name, "identifier": ident,
              "payload": {"stripe_customer_id": cid, "value": str(value)}}
    if ts is not None:
        params["timestamp"] = ts
    options = {"idempotency_key": key} if key else None
    return client.v1.billing.meter_events.create(params, options)


def _window() -> tuple[int, int]:
    t = int(time.time()) // MINUTE * MINUTE
    return t - 60 * MINUTE, t + 2 * MINUTE


def test_customer_create_retrieve_and_auth(srv: StripeLocal) -> None:
    client = _client(srv)
    cus = client.v1.customers.create({"email": "a@example.com", "name": "A",
                                      "metadata": {"user_id": "42"}})
    assert cus.id.startswith("cus_") and cus.object == "customer" and not cus.livemode
    got = client.v1.customers.retrieve(cus.id)
    assert got.email == "a@example.com" and got.metadata["user_id"] == "42"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_nope")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.AuthenticationError):
        _client(srv, key="sk_test_wrong").v1.customers.create({"email": "b@example.com"})
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.create({"emial": "typo@example.com"})
    assert unknown.value.code == "parameter_unknown"
    assert len(srv.customers) == 1
    assert [c.id for c in client.v1.customers.list({"email": "a@example.com"})] == [cus.id]


def test_idempotent_replay_and_mismatch(srv: StripeLocal) -> None:
    client = _client(srv)
    first = client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "k1"})
    again = client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "k1"})
    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert len(srv.customers) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create({"email": "other@example.com"}, {"idempotency_key": "k1"})
    assert len(srv.customers) == 1


def test_prices_lookup_keys_and_decimal(srv: StripeLocal) -> None:
    client = _client(srv)
    prod = client.v1.products.create({"name": "Inference"})
    meter = _meter(client)
    price = client.v1.prices.create({
        "currency": "usd", "product": prod.id, "unit_amount_decimal": "0.000125",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        "lookup_key": "calls_v1",
    })
    assert price.unit_amount is None and price.unit_amount_decimal == Decimal("0.000125")
    found = client.v1.prices.list({"lookup_keys": ["calls_v1"], "active": True})
    assert [p.id for p in found.data] == [price.id]
    with pytest.raises(stripe.InvalidRequestError) as dup:
        client.v1.prices.create({"currency": "usd", "product": prod.id, "unit_amount": 5,
                                 "lookup_key": "calls_v1"})
    assert dup.value.param == "lookup_key"


def test_meter_events_summaries_and_duplicate_identifier(srv: StripeLocal) -> None:
    client = _client(srv)
    cus = client.v1.customers.create({"email": "a@example.com"})
    meter = _meter(client)
    assert client.v1.billing.meters.list({"status": "active"}).data[0].id == meter.id
    _event(client, cus.id, 5, "ev-1")
    _event(client, cus.id, 7, "ev-2")
    with pytest.raises(stripe.InvalidRequestError) as dup:
        _event(client, cus.id, 5, "ev-1")
    assert "already exists with identifier ev-1" in str(dup.value.user_message)
    start, end = _window()
    summaries = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": cus.id, "start_time": start, "end_time": end})
    assert summaries.data[0].aggregated_value == 12
    assert srv.meter_totals("api_calls") == {cus.id: 12}
    with pytest.raises(stripe.InvalidRequestError):
        _event(client, "cus_missing", 1, "ev-3")
    with pytest.raises(stripe.InvalidRequestError):
        _event(client, cus.id, -1, "ev-4")
    with pytest.raises(stripe.InvalidRequestError):
        _event(client, cus.id, 1, "ev-5", ts=int(time.time()) - 36 * 86400)
    with pytest.raises(stripe.InvalidRequestError):
        _event(client, cus.id, 1, "ev-6", event_name="no_such_meter")
    assert srv.meter_totals("api_calls") == {cus.id: 12}


def test_server_error_retried_once_applied(srv: StripeLocal) -> None:
    client = _client(srv, retries=2)
    cus = client.v1.customers.create({"email": "a@example.com"})
    _meter(client)
    srv.fail_next("/v1/billing/meter_events", status=500)
    _event(client, cus.id, 3, "ev-1")
    assert srv.count("/v1/billing/meter_events", "POST") == 2
    assert [r[3] for r in srv.requests if r[1] == "/v1/billing/meter_events"] == [500, 200]
    assert srv.meter_totals("api_calls") == {cus.id: 3}


def test_lost_reply_retry_counted_once(srv: StripeLocal) -> None:
    client = _client(srv, retries=2)
    cus = client.v1.customers.create({"email": "a@example.com"})
    _meter(client)
    srv.fail_next("/v1/billing/meter_events", status=500, after_processing=True)
    resp = _event(client, cus.id, 4, "ev-1", key="usage-row-1")
    assert resp.last_response.headers.get("Idempotent-Replayed") == "true"
    assert srv.count("/v1/billing/meter_events") == 2
    assert srv.meter_totals("api_calls") == {cus.id: 4}
    # Without SDK retries the caller sees the error, although Stripe applied the event.
    no_retry = _client(srv)
    srv.fail_next("/v1/billing/meter_events", status=500, after_processing=True)
    with pytest.raises(stripe.APIError):
        _event(no_retry, cus.id, 6, "ev-2", key="usage-row-2")
    assert srv.meter_totals("api_calls") == {cus.id: 10}
    # A fresh key with the same identifier is refused: still counted once.
    with pytest.raises(stripe.InvalidRequestError):
        _event(no_retry, cus.id, 6, "ev-2", key="usage-row-2-new")
    assert srv.meter_totals("api_calls") == {cus.id: 10}


def test_transfers_need_onboarding(srv: StripeLocal) -> None:
    client = _client(srv)
    acct = client.v1.accounts.create({"type": "express", "email": "seller@example.com",
                                      "country": "US",
                                      "capabilities": {"transfers": {"requested": True}}})
    assert acct.capabilities["transfers"] == "inactive" and not acct.details_submitted
    link = client.v1.account_links.create({"account": acct.id, "type": "account_onboarding",
                                           "refresh_url": "https://x/r",
                                           "return_url": "https://x/d"})
    assert link.url.startswith(srv.url) and link.expires_at > time.time()
    params = {"amount": 1500, "currency": "usd", "destination": acct.id,
              "transfer_group": "payout-1"}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.transfers.create(params)
    assert refused.value.code == "insufficient_capabilities_for_transfer"
    evt = srv.complete_onboarding(acct.id)
    assert evt["type"] == "account.updated"
    assert evt["data"]["object"]["capabilities"]["transfers"] == "active"
    tr = client.v1.transfers.create(params)
    assert tr.id.startswith("tr_") and tr.amount == 1500
    assert [t.id for t in client.v1.transfers.list({"destination": acct.id}).data] == [tr.id]
    assert client.v1.transfers.retrieve(tr.id).destination == acct.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.transfers.create({**params, "amount": 0})
    assert len(srv.transfers) == 1


def test_checkout_subscription_and_webhook_signature(srv: StripeLocal) -> None:
    client = _client(srv)
    cus = client.v1.customers.create({"email": "a@example.com"})
    meter = _meter(client)
    prod = client.v1.products.create({"name": "Plan"})
    price = client.v1.prices.create({"currency": "usd", "product": prod.id, "unit_amount": 0,
                                     "recurring": {"interval": "month",
                                                   "usage_type": "metered",
                                                   "meter": meter.id}})
    sess = client.v1.checkout.sessions.create({
        "mode": "subscription", "customer": cus.id, "line_items": [{"price": price.id}],
        "success_url": "https://x/ok", "cancel_url": "https://x/no",
        "client_reference_id": "user-1"})
    assert sess.status == "open" and sess.url == f"{srv.url}/checkout/{sess.id}"
    evt = srv.complete_checkout(sess.id)
    paid = client.v1.checkout.sessions.retrieve(sess.id)
    assert paid.status == "complete" and paid.subscription.startswith("sub_")
    assert srv.subscriptions[paid.subscription]["items"]["data"][0]["price"]["id"] == price.id
    payload = json.dumps(evt).encode()
    header = srv.sign(payload, "whsec_test")
    event = stripe.Webhook.construct_event(payload, header, "whsec_test")
    assert event.type == "checkout.session.completed"
    assert event.data.object.client_reference_id == "user-1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other")
    pay = client.v1.checkout.sessions.create({
        "mode": "payment", "line_items": [{"quantity": 2, "price_data": {
            "currency": "usd", "unit_amount": 250, "product_data": {"name": "Credits"}}}]})
    assert pay.amount_total == 500 and pay.payment_status == "unpaid"


def test_concurrent_meter_events_same_customer_rate_limited(srv: StripeLocal) -> None:
    client = _client(srv)
    cus = client.v1.customers.create({"email": "a@example.com"})
    _meter(client)
    srv.meter_event_delay_s = 0.3
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def send(ident: str) -> None:
        barrier.wait()
        try:
            _event(client, cus.id, 1, ident)
            outcomes.append("ok")
        except stripe.RateLimitError:
            outcomes.append("429")

    threads = [threading.Thread(target=send, args=(f"ev-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["429", "ok"]
    assert len(srv.concurrency_violations) == 1
    assert srv.meter_totals("api_calls") == {cus.id: 1}


def test_v2_meter_event_stream(srv: StripeLocal) -> None:
    client = _client(srv)
    cus = client.v1.customers.create({"email": "a@example.com"})
    _meter(client)
    session = client.v2.billing.meter_event_session.create()
    stream = _client(srv, key=session.authentication_token)
    events = [{"event_name": "api_calls", "identifier": f"s-{i}",
               "payload": {"stripe_customer_id": cus.id, "value": "2"}} for i in (1, 2, 1)]
    stream.v2.billing.meter_event_stream.create({"events": events})
    assert srv.meter_totals("api_calls") == {cus.id: 4}
    assert len(srv.stream_rejected) == 1
    with pytest.raises(stripe.AuthenticationError):
        _client(srv).v2.billing.meter_event_stream.create({"events": events})


def test_unknown_route(srv: StripeLocal) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        _client(srv).raw_request("get", "/v1/nothing_here")
    assert "Unrecognized request URL" in str(err.value.user_message)


def test_same_key_while_first_in_flight_conflicts(srv: StripeLocal) -> None:
    client = _client(srv)
    cus = client.v1.customers.create({"email": "a@example.com", "metadata": {"0": "digit"}})
    assert client.v1.customers.retrieve(cus.id).metadata["0"] == "digit"
    _meter(client)
    srv.meter_event_delay_s = 0.2
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def send() -> None:
        barrier.wait()
        try:
            _event(client, cus.id, 1, "ev-1", key="same-key")
            statuses.append(200)
        except stripe.StripeError as e:
            statuses.append(e.http_status or 0)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 409]
    assert srv.concurrency_violations == []  # a retry of the same request is no violation
    assert srv.meter_totals("api_calls") == {cus.id: 1}
    srv.fail_next("/v1/customers", status=429)
    with pytest.raises(stripe.RateLimitError):
        _client(srv, retries=2).v1.customers.create({"email": "b@example.com"})
    assert len(srv.customers) == 1
