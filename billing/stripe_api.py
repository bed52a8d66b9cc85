"""The only place that talks to Stripe: the official SDK through one client instance.

Money crosses this boundary in two units: the ledger's micro-units (1e-6 USD) and Stripe's
cents. Usage is metered in micro-units and priced at 0.0001 cent per unit, so what Stripe is
told equals the ledger to the micro-unit.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe

stripe.enable_telemetry = False

METER_EVENT = "aimarket_usage"
PRICE_LOOKUP_KEY = "aimarket_usage_micro_usd"
MICRO_PER_CENT = 10_000
CURRENCY = "usd"


def _tag(text: str) -> str:
    """Keys derived from local ids also carry this, so two installations sharing a Stripe
    account never collide."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StripeConfig:
    api_key: str
    api_base: str = "https://api.stripe.com"
    webhook_secret: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    max_network_retries: int = 2


class StripeGateway:
    """Stripe's objects for aimarket: the usage meter and its price (created once, found by
    event name and lookup key thereafter), customers, checkouts, meter events, Connect."""

    def __init__(self, config: StripeConfig) -> None:
        self.config = config
        base = config.api_base.rstrip("/")
        self.client = stripe.StripeClient(
            config.api_key,
            base_addresses={"api": base, "connect": base, "files": base, "meter_events": base},
            max_network_retries=config.max_network_retries,
        )
        self._price_id: str | None = None
        self._lock = threading.Lock()

    # -- the usage meter and its metered price -----------------------------------------------
    def usage_price(self) -> str:
        """The metered Price's id; creates the Billing Meter, Product and Price on first use.
        Deterministic idempotency keys make concurrent first uses create them once."""
        with self._lock:
            if self._price_id is None:
                self._price_id = self._ensure_price()
            return self._price_id

    def _ensure_price(self) -> str:
        """Find or make the meter and its price. No fixed idempotency keys here (Stripe would
        replay a failed first attempt for a day); Stripe's own uniqueness of the meter's event
        name and the price's lookup key settles a race between two processes."""
        v1 = self.client.v1
        found = v1.prices.list(params={"lookup_keys": [PRICE_LOOKUP_KEY], "active": True})
        if found.data:
            return str(found.data[0].id)
        meter = self._meter()
        product = v1.products.create(params={"name": "aimarket pay-per-call inference"})
        try:
            price = v1.prices.create(params={
                "currency": CURRENCY, "product": product.id,
                "unit_amount_decimal": Decimal("0.0001"),
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
                "lookup_key": PRICE_LOOKUP_KEY,
            })
        except stripe.InvalidRequestError:  # another process made it first
            found = v1.prices.list(params={"lookup_keys": [PRICE_LOOKUP_KEY], "active": True})
            if not found.data:
                raise
            return str(found.data[0].id)
        return str(price.id)

    def _meter(self) -> str:
        def existing() -> str | None:
            for m in self.client.v1.billing.meters.list(params={"limit": 100}).data:
                if m.event_name == METER_EVENT and m.status == "active":
                    return str(m.id)
            return None

        found = existing()
        if found:
            return found
        try:
            return str(self.client.v1.billing.meters.create(params={
                "display_name": "aimarket paid calls (micro-USD)",
                "event_name": METER_EVENT,
                "default_aggregation": {"formula": "sum"},
                "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "value_settings": {"event_payload_key": "value"},
            }).id)
        except stripe.InvalidRequestError:
            found = existing()
            if not found:
                raise
            return found

    def meter_id(self) -> str:
        price = self.client.v1.prices.retrieve(self.usage_price())
        return str(price.recurring.meter)  # type: ignore[union-attr]

    # -- buyers ---------------------------------------------------------------------------------
    def create_customer(self, account_id: int, email: str) -> str:
        customer = self.client.v1.customers.create(
            params={"email": email, "metadata": {"aimarket_account": str(account_id)}},
            options={"idempotency_key": f"aimarket-customer-{account_id}-{_tag(email)}"},
        )
        return str(customer.id)

    def checkout_credits(self, customer: str, account_id: int, cents: int) -> Any:
        return self.client.v1.checkout.sessions.create(params={
            "mode": "payment", "customer": customer, "client_reference_id": str(account_id),
            "line_items": [{"quantity": 1, "price_data": {
                "currency": CURRENCY, "unit_amount": cents,
                "product_data": {"name": "aimarket prepaid credits"}}}],
            "success_url": f"{self.config.public_url}/?checkout=success",
            "cancel_url": f"{self.config.public_url}/?checkout=cancelled",
            "metadata": {"aimarket_purpose": "credits", "aimarket_account": str(account_id)},
        })

    def checkout_item(self, customer: str, account_id: int, cents: int, product: str,
                      purpose: str, return_path: str) -> Any:
        """A one-time card payment for one item (an export licence); the buyer comes back
        to ``return_path`` on this site."""
        back = f"{self.config.public_url}{return_path}"
        return self.client.v1.checkout.sessions.create(params={
            "mode": "payment", "customer": customer, "client_reference_id": str(account_id),
            "line_items": [{"quantity": 1, "price_data": {
                "currency": CURRENCY, "unit_amount": cents,
                "product_data": {"name": product}}}],
            "success_url": f"{back}?checkout=success", "cancel_url": f"{back}?checkout=cancelled",
            "metadata": {"aimarket_purpose": purpose, "aimarket_account": str(account_id)},
        })

    def checkout_postpaid(self, customer: str, account_id: int) -> Any:
        """A subscription Checkout for the metered price: collects a payment method and
        starts monthly usage billing."""
        return self.client.v1.checkout.sessions.create(params={
            "mode": "subscription", "customer": customer,
            "client_reference_id": str(account_id),
            "line_items": [{"price": self.usage_price()}],
            "success_url": f"{self.config.public_url}/?postpaid=success",
            "cancel_url": f"{self.config.public_url}/?postpaid=cancelled",
            "metadata": {"aimarket_purpose": "postpaid", "aimarket_account": str(account_id)},
        })

    def meter_event(self, customer: str, value: int, identifier: str, timestamp: int,
                    idempotency_key: str) -> None:
        """One aggregated usage figure. Stripe counts an identifier once; the idempotency key
        changes with each sync attempt (Stripe replays even a 500 for a key it has seen), so a
        later attempt reaches Stripe and meets the identifier instead."""
        self.usage_price()  # the meter exists before any event names it
        try:
            self.client.v1.billing.meter_events.create(params={
                "event_name": METER_EVENT, "identifier": identifier, "timestamp": timestamp,
                "payload": {"stripe_customer_id": customer, "value": str(value)},
            }, options={"idempotency_key": idempotency_key})
        except stripe.InvalidRequestError as exc:
            # Past the idempotency key's lifetime Stripe answers a repeated identifier with
            # this error: the event was counted by an earlier attempt.
            if "already exists with identifier" not in str(exc.user_message or exc):
                raise

    def meter_total(self, customer: str, start: int, end: int) -> int:
        """What Stripe's meter holds for a customer in [start, end) (Unix seconds)."""
        summaries = self.client.v1.billing.meters.event_summaries.list(self.meter_id(), params={
            "customer": customer, "start_time": start, "end_time": end})
        return sum(int(s.aggregated_value) for s in summaries.data)

    # -- sellers --------------------------------------------------------------------------------
    def create_connect_account(self, account_id: int, email: str) -> str:
        acct = self.client.v1.accounts.create(params={
            "type": "express", "email": email,
            "capabilities": {"transfers": {"requested": True}},
            "metadata": {"aimarket_account": str(account_id)},
        }, options={"idempotency_key": f"aimarket-connect-{account_id}-{_tag(email)}"})
        return str(acct.id)

    def onboarding_link(self, connect_account: str) -> str:
        link = self.client.v1.account_links.create(params={
            "account": connect_account, "type": "account_onboarding",
            "refresh_url": f"{self.config.public_url}/?connect=refresh",
            "return_url": f"{self.config.public_url}/?connect=done",
        })
        return str(link.url)

    def transfer(self, destination: str, cents: int, payout_id: int, period: str,
                 idempotency_key: str) -> str:
        """Pay a seller; a transfer already made for this payout (a reply lost earlier, even
        beyond the idempotency key's 24 h) is found by its metadata, never made twice."""
        for t in self.client.v1.transfers.list(
                params={"destination": destination, "limit": 100}).data:
            meta = t.metadata.to_dict() if t.metadata else {}
            if meta.get("aimarket_payout") == str(payout_id):
                return str(t.id)
        made = self.client.v1.transfers.create(params={
            "amount": cents, "currency": CURRENCY, "destination": destination,
            "transfer_group": f"aimarket-payout-{payout_id}",
            "description": f"aimarket seller earnings {period}",
            "metadata": {"aimarket_payout": str(payout_id), "aimarket_period": period},
        }, options={"idempotency_key": idempotency_key})
        return str(made.id)

    # -- webhooks -------------------------------------------------------------------------------
    def account(self, connect_account: str) -> dict[str, Any]:
        acct = self.client.v1.accounts.retrieve(connect_account)
        return {"id": acct.id, "payouts_enabled": bool(acct.payouts_enabled)}

    def parse_webhook(self, payload: bytes, signature: str | None) -> Any:
        """The verified event; raises ValueError or stripe.SignatureVerificationError.
        Several secrets (comma-separated) serve the account endpoint and the Connect
        endpoint, which Stripe signs with a secret of its own."""
        secrets = [x.strip() for x in (self.config.webhook_secret or "").split(",") if x.strip()]
        error: Exception | None = None
        for secret in secrets or [""]:
            try:
                return self.client.construct_event(payload, signature or "", secret)
            except stripe.SignatureVerificationError as exc:
                error = exc
        assert error is not None
        raise error
