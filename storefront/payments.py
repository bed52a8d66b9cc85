"""Money in: prepaid credit bought through Stripe Checkout, postpaid sign-up, payouts
onboarding, and credit an admin grants. One amount parser for all of them."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from metering import CreditEntry, add_credit, format_usd, to_micro
from serving import Conflict, InvalidInput, NotFound

from .models import Account

if TYPE_CHECKING:
    from .services import Services

MAX_GRANT = 1_000_000 * 1_000_000  # micro-USD


def parse_amount(text: str) -> int:
    """A USD decimal string ("10.00") in micro-units; ``invalid_amount`` when it is not one."""
    return to_micro(text)


class CheckoutRequest(BaseModel):
    amount: str = Field(max_length=32, description="USD to add as credit, e.g. \"20.00\"")


def checkout(svc: Services, account: Account, body: CheckoutRequest) -> dict[str, Any]:
    """A Stripe Checkout Session buying prepaid credit; credited when Stripe confirms."""
    return svc.billing.checkout_credits(account.id, account.email, parse_amount(body.amount))


def postpaid(svc: Services, account: Account) -> dict[str, Any]:
    """A Checkout Session that saves a card and subscribes to metered usage billing."""
    return svc.billing.checkout_postpaid(account.id, account.email)


def connect(svc: Services, seller: Account) -> dict[str, Any]:
    """Stripe Connect (Express) onboarding: the seller's account and a fresh onboarding link."""
    return svc.billing.connect(seller.id, seller.email)


class Grant(BaseModel):
    account_email: str = Field(max_length=254)
    amount: str = Field(max_length=32, description="USD as a decimal string, e.g. \"10.00\"")
    reference: str | None = Field(None, max_length=100, description="idempotency reference")
    note: str = Field("", max_length=500)


def _same_grant(svc: Services, reference: str, account: Account, amount: int) -> None:
    """A reference already used by another grant (amount or account) is a conflict: echoing
    the new amount would claim a credit that was never made."""
    with svc.sessions() as db:
        entry = db.execute(
            select(CreditEntry).where(CreditEntry.reference == reference)
        ).scalar_one()
    if entry.account_id != account.id or entry.amount != amount or entry.reason != "grant":
        raise Conflict(
            f"reference '{reference}' already credited {format_usd(entry.amount)} USD"
            + ("" if entry.account_id == account.id else " to another account")
            + "; a replay must repeat the same grant", code="reference_conflict",
            details={"reference": reference, "amount": format_usd(entry.amount)})


async def grant_credits(svc: Services, admin: Account, body: Grant) -> dict[str, Any]:
    """Credit an account (idempotent per reference); returns what was granted and the balance."""
    amount = parse_amount(body.amount)
    if not 0 < amount <= MAX_GRANT:
        raise InvalidInput("amount must be positive and at most 1000000.00", code="invalid_amount")

    def find() -> Account | None:
        with svc.sessions() as db:
            return db.execute(
                select(Account).where(Account.email == body.account_email.lower())
            ).scalar_one_or_none()

    account = await run_in_threadpool(find)
    if account is None:
        raise NotFound(f"no account '{body.account_email}'", code="account_not_found")
    reference = f"grant:{body.reference or uuid.uuid4().hex}"
    recorded = False

    async def record() -> bool:
        nonlocal recorded
        recorded = await run_in_threadpool(
            add_credit, svc.engine, account.id, amount, reason="grant", reference=reference,
            note=body.note or f"granted by {admin.email}",
        )
        return recorded

    balance = await svc.meter.add_credits(account.id, amount, record)
    if not recorded:  # a replay: idempotent only if it is the same grant
        await run_in_threadpool(_same_grant, svc, reference, account, amount)
    return {"account_email": account.email, "amount": format_usd(amount),
            "credits": format_usd(balance), "reference": reference}
