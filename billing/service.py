"""Billing as the app sees it: checkouts, webhooks, Connect onboarding, usage sync, payouts.

Stripe mode when an API key is configured; ledger-only mode otherwise (the same ledger, credits
granted by an admin), where every Stripe operation answers a clear 409.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import stripe as stripe_sdk
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metering import add_credit, format_usd, utcnow
from serving import BadRequest, Conflict, InvalidInput, ServiceUnavailable

from . import payouts as payouts_mod
from .stripe_api import CURRENCY, MICRO_PER_CENT, StripeGateway
from .tables import BillingProfile, CheckoutRecord, StripeEvent
from .usage import CreditFn, SyncResult, collect_account, sync

log = logging.getLogger(__name__)
# What a paid checkout of an item buys, once its payment is credited: (account, item,
# checkout session id). Registered by the app (billing knows no listings).
Fulfil = Callable[[int, str, str], Awaitable[None]]


@dataclass(frozen=True)
class BillingPolicy:
    credit_line: int  # micro-units a postpaid buyer may owe between syncs
    min_checkout: int = 500_000  # $0.50, Stripe's smallest USD charge
    max_checkout: int = 10_000 * 1_000_000


def _stripe_down(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"the payment processor did not answer: {exc}",
                              code="stripe_unavailable")


class Billing:
    def __init__(self, engine: Engine, stripe: StripeGateway | None, credit: CreditFn,
                 policy: BillingPolicy) -> None:
        self.engine, self.stripe, self.credit, self.policy = engine, stripe, credit, policy
        self.fulfil: dict[str, Fulfil] = {}  # purpose -> what its paid checkout buys

    @property
    def mode(self) -> str:
        return "stripe" if self.stripe else "ledger"

    def _require(self) -> StripeGateway:
        if self.stripe is None:
            raise Conflict("this server bills from the ledger only (no Stripe configured): "
                           "ask an administrator for credits", code="stripe_not_configured")
        return self.stripe

    # -- profiles -----------------------------------------------------------------------------
    def profile(self, account_id: int) -> BillingProfile:
        with Session(self.engine, expire_on_commit=False) as db:
            row = db.get(BillingProfile, account_id)
            if row is None:
                try:
                    db.execute(insert(BillingProfile).values(
                        account_id=account_id, credit_line=0, payouts_enabled=False,
                        created_at=utcnow()))
                    db.commit()
                except IntegrityError:
                    db.rollback()
                row = db.get(BillingProfile, account_id)
            assert row is not None
            return row

    def _customer(self, account_id: int, email: str) -> str:
        gw = self._require()
        prof = self.profile(account_id)
        if prof.customer_id:
            return prof.customer_id
        # The idempotency key is derived from the account: two racing requests get one
        # Customer from Stripe, and the conditional update keeps the first id.
        customer = gw.create_customer(account_id, email)
        with self.engine.begin() as conn:
            conn.execute(update(BillingProfile).where(
                BillingProfile.account_id == account_id, BillingProfile.customer_id.is_(None))
                .values(customer_id=customer))
        return self.profile(account_id).customer_id or customer

    def summary(self, account_id: int) -> dict[str, Any]:
        prof = self.profile(account_id)
        return {
            "mode": self.mode, "customer_id": prof.customer_id,
            "postpaid": prof.postpaid_since is not None and prof.postpaid_until is None,
            "postpaid_suspended": bool(prof.subscription_id and prof.postpaid_until),
            "postpaid_since": prof.postpaid_since.isoformat() if prof.postpaid_since else None,
            "credit_line": format_usd(prof.credit_line),
            "connect_account_id": prof.connect_account_id,
            "payouts_enabled": prof.payouts_enabled,
        }

    # -- buyers ---------------------------------------------------------------------------------
    def checkout_credits(self, account_id: int, email: str, amount: int) -> dict[str, Any]:
        gw = self._require()
        p = self.policy
        if not p.min_checkout <= amount <= p.max_checkout:
            raise InvalidInput(f"amount must be between {format_usd(p.min_checkout)} and "
                               f"{format_usd(p.max_checkout)}", code="invalid_amount")
        if amount % MICRO_PER_CENT:
            raise InvalidInput("amount must be whole cents", code="invalid_amount")
        try:
            session = gw.checkout_credits(self._customer(account_id, email), account_id,
                                          amount // MICRO_PER_CENT)
        except stripe_sdk.StripeError as exc:
            raise _stripe_down(exc) from exc
        self._record_checkout(session.id, account_id, "credits", amount, session.url)
        return {"id": session.id, "url": session.url, "amount": format_usd(amount)}

    def checkout_item(self, account_id: int, email: str, amount: int, *, purpose: str,
                      item: str, product: str, return_path: str) -> dict[str, Any]:
        """A card payment for one item (e.g. an export licence). When Stripe confirms it,
        the webhook credits the amount (once per session) and calls the purpose's
        ``fulfil``, which buys the item from those credits."""
        gw = self._require()
        if purpose not in self.fulfil:
            raise Conflict(f"nothing can be bought by card as '{purpose}'",
                           code="not_payable_by_card")
        if amount < self.policy.min_checkout or amount % MICRO_PER_CENT:
            raise InvalidInput(f"{format_usd(amount)} USD cannot be paid by card (at least "
                               f"{format_usd(self.policy.min_checkout)}, whole cents): pay "
                               "from your credits", code="invalid_amount")
        try:
            session = gw.checkout_item(self._customer(account_id, email), account_id,
                                       amount // MICRO_PER_CENT, product, purpose,
                                       return_path)
        except stripe_sdk.StripeError as exc:
            raise _stripe_down(exc) from exc
        self._record_checkout(session.id, account_id, purpose, amount, session.url, item)
        return {"id": session.id, "url": session.url, "amount": format_usd(amount)}

    def checkout_postpaid(self, account_id: int, email: str) -> dict[str, Any]:
        gw = self._require()
        prof = self.profile(account_id)
        if prof.subscription_id and prof.postpaid_until is None:
            raise Conflict("postpaid billing is already on for this account",
                           code="already_postpaid")
        if prof.subscription_id:
            raise Conflict("the last invoice was not paid; Stripe retries the card, and "
                           "postpaid billing resumes when it is paid", code="postpaid_suspended")
        with Session(self.engine) as db:  # one open sign-up at a time: no second subscription
            open_one = db.execute(select(CheckoutRecord).where(
                CheckoutRecord.account_id == account_id, CheckoutRecord.purpose == "postpaid",
                CheckoutRecord.status == "open",
                CheckoutRecord.created_at > utcnow() - timedelta(hours=23))).scalars().first()
        if open_one is not None and open_one.url:
            return {"id": open_one.id, "url": open_one.url}
        try:
            session = gw.checkout_postpaid(self._customer(account_id, email), account_id)
        except stripe_sdk.StripeError as exc:
            raise _stripe_down(exc) from exc
        self._record_checkout(session.id, account_id, "postpaid", 0, session.url)
        return {"id": session.id, "url": session.url}

    def _record_checkout(self, sid: str, account_id: int, purpose: str, amount: int,
                         url: str = "", item: str | None = None) -> None:
        with Session(self.engine) as db:
            db.add(CheckoutRecord(id=sid, account_id=account_id, purpose=purpose, amount=amount,
                                  url=url or "", item=item))
            db.commit()

    # -- sellers ----------------------------------------------------------------------------------
    def connect(self, account_id: int, email: str) -> dict[str, Any]:
        gw = self._require()
        try:
            prof = self.profile(account_id)
            acct = prof.connect_account_id
            if acct is None:
                acct = gw.create_connect_account(account_id, email)
                with self.engine.begin() as conn:
                    conn.execute(update(BillingProfile).where(
                        BillingProfile.account_id == account_id,
                        BillingProfile.connect_account_id.is_(None))
                        .values(connect_account_id=acct))
                acct = self.profile(account_id).connect_account_id or acct
            url = gw.onboarding_link(acct)
            if not prof.payouts_enabled:  # a missed account.updated event is caught up here
                self._account_updated(gw.account(acct))
        except stripe_sdk.StripeError as exc:
            raise _stripe_down(exc) from exc
        return {"account_id": acct, "url": url,
                "payouts_enabled": self.profile(account_id).payouts_enabled}

    # -- webhooks -------------------------------------------------------------------------------
    async def webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        gw = self._require()
        if not gw.config.webhook_secret:
            raise Conflict("no webhook secret configured", code="webhook_not_configured")
        try:
            event = gw.parse_webhook(payload, signature)
        except stripe_sdk.SignatureVerificationError as exc:
            raise BadRequest(f"webhook signature rejected: {exc.user_message or exc}",
                             code="invalid_signature") from exc
        except ValueError as exc:
            raise BadRequest("webhook body is not a Stripe event", code="invalid_payload") \
                from exc
        with Session(self.engine) as db:
            if db.get(StripeEvent, event.id) is not None:
                return {"received": True, "duplicate": True}
        obj = (json.loads(payload).get("data") or {}).get("object")  # verified: plain dicts
        if not isinstance(obj, dict) or "id" not in obj:
            raise BadRequest("webhook event carries no object", code="invalid_payload")
        handled = True
        if event.type in ("checkout.session.completed",
                          "checkout.session.async_payment_succeeded"):
            handled = await self._checkout_completed(obj)
        elif event.type == "account.updated":
            await asyncio.to_thread(self._account_updated, obj)
        elif event.type in ("customer.subscription.deleted", "invoice.payment_failed"):
            await asyncio.to_thread(self._postpaid_off, obj, event.type)
        elif event.type == "invoice.paid":
            await asyncio.to_thread(self._postpaid_resume, obj)
        else:
            handled = False
        # Effects are idempotent on their own (unique references); recording the id after
        # them means a failure midway is retried by Stripe instead of forgotten.
        table = StripeEvent.__table__
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as conn:
            conn.execute(dialect.insert(table).values(
                id=event.id, type=event.type, received_at=utcnow()).on_conflict_do_nothing())
        return {"received": True, "duplicate": False, "handled": handled}

    async def _checkout_completed(self, obj: Any) -> bool:
        with Session(self.engine) as db:
            rec = db.get(CheckoutRecord, obj["id"])
        if rec is None:
            log.warning("checkout %s is not one of ours; ignored", obj["id"])
            return False
        if rec.purpose != "postpaid":  # credits, or an item paid by card
            if obj.get("payment_status") != "paid":
                return False  # async payment methods: wait for the paid event
            paid = int(obj.get("amount_total") or 0) * MICRO_PER_CENT
            if paid != rec.amount or obj.get("currency", CURRENCY) != CURRENCY:
                # Acknowledged (a retry would not change it) but not credited: an operator
                # must look at it.
                log.error("checkout %s paid %s %s, ordered %s micro-USD: NOT credited",
                          rec.id, obj.get("amount_total"), obj.get("currency"), rec.amount)
                return False

            async def record() -> bool:
                return await asyncio.to_thread(self._complete_credits, rec)

            # An item's payment is credited first (once per session, like credits), then
            # bought from the credits: a replay finds the item bought and buys nothing.
            await self.credit(rec.account_id, rec.amount, record)
            if rec.purpose != "credits":
                fulfil = self.fulfil.get(rec.purpose)
                if fulfil is None:  # the payment is kept as credits: nothing is lost
                    log.error("checkout %s paid for %s %s, which nothing here fulfils; "
                              "credited only", rec.id, rec.purpose, rec.item)
                else:
                    await fulfil(rec.account_id, rec.item or "", rec.id)
        else:
            await asyncio.to_thread(self._postpaid_on, rec, obj.get("subscription"))
        return True

    def _complete_credits(self, rec: CheckoutRecord) -> bool:
        with self.engine.begin() as conn:
            conn.execute(update(CheckoutRecord).where(CheckoutRecord.id == rec.id)
                         .values(status="completed", completed_at=utcnow()))
            note = ("prepaid credits bought with Stripe Checkout" if rec.purpose == "credits"
                    else f"card payment for {rec.purpose} {rec.item or ''}".strip())
            return add_credit(self.engine, rec.account_id, rec.amount, reason="checkout",
                              reference=f"checkout:{rec.id}", conn=conn, note=note[:500])

    def _postpaid_on(self, rec: CheckoutRecord, subscription: Any) -> None:
        sub = subscription if isinstance(subscription, str) else (subscription or {}).get("id")
        with self.engine.begin() as conn:
            conn.execute(update(CheckoutRecord).where(CheckoutRecord.id == rec.id)
                         .values(status="completed", completed_at=utcnow()))
            started = conn.execute(update(BillingProfile).where(
                BillingProfile.account_id == rec.account_id,
                BillingProfile.subscription_id.is_(None))
                .values(subscription_id=sub, postpaid_since=utcnow(), postpaid_until=None,
                        credit_line=self.policy.credit_line)).rowcount
        if not started:
            log.error("account %s completed a second postpaid checkout (%s): subscription %s "
                      "is not used; cancel it in Stripe", rec.account_id, rec.id, sub)

    def _account_updated(self, obj: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(BillingProfile)
                         .where(BillingProfile.connect_account_id == obj["id"])
                         .values(payouts_enabled=bool(obj.get("payouts_enabled"))))

    def _postpaid_off(self, obj: Any, why: str) -> None:
        """A cancelled subscription ends postpaid billing, a failed invoice suspends it: the
        calls made until now are still reported (and invoiced); later calls need prepaid
        credit and are never reported."""
        with Session(self.engine) as db:
            prof = db.execute(select(BillingProfile).where(
                BillingProfile.customer_id == obj.get("customer"))).scalar_one_or_none()
        if prof is None or prof.postpaid_since is None:
            return
        values: dict[str, Any] = {"credit_line": 0}
        if prof.postpaid_until is None:
            values["postpaid_until"] = utcnow()
        if why == "customer.subscription.deleted":
            values["subscription_id"] = None
        with self.engine.begin() as conn:
            conn.execute(update(BillingProfile)
                         .where(BillingProfile.account_id == prof.account_id).values(**values))
        collect_account(self.engine, prof.account_id)

    def _postpaid_resume(self, invoice: Any) -> None:
        """A paid invoice of the current subscription lifts a suspension."""
        sub = invoice.get("subscription")
        if not sub:
            return
        with self.engine.begin() as conn:
            ended = conn.execute(select(BillingProfile.account_id).where(
                BillingProfile.subscription_id == sub,
                BillingProfile.postpaid_until.is_not(None))).scalar_one_or_none()
        if ended is None:
            return
        collect_account(self.engine, ended)  # what the old period owes is reported first
        with self.engine.begin() as conn:
            conn.execute(update(BillingProfile).where(BillingProfile.account_id == ended)
                         .values(postpaid_since=utcnow(), postpaid_until=None,
                                 credit_line=self.policy.credit_line))

    # -- batch jobs -----------------------------------------------------------------------------
    async def sync(self) -> SyncResult:
        return await sync(self.engine, self._require(), self.credit)

    def payouts(self, period: str) -> list[payouts_mod.PayoutResult]:
        return payouts_mod.run(self.engine, self._require(), period)
