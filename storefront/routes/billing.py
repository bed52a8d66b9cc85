"""Billing endpoints: Stripe Checkout for credits, postpaid sign-up, Connect onboarding, the
verified webhook, and monthly statements (JSON or CSV) for buyers and sellers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from billing import statements
from metering import format_usd

from .. import payments
from ..deps import Buyer, Seller, ServicesDep
from ..models import Listing
from ..payments import CheckoutRequest
from ..services import Services

router = APIRouter(tags=["billing"])

Month = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM (UTC)")]
Format = Annotated[Literal["json", "csv"], Query()]


@router.get("/v1/billing")
async def billing_summary(account: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """How this account pays and is paid: mode, Stripe ids, postpaid status, credit."""
    out = await run_in_threadpool(svc.billing.summary, account.id)
    out["credits"] = format_usd(await svc.meter.credits(account.id))
    return out


@router.post("/v1/billing/checkout", status_code=201)
def checkout(body: CheckoutRequest, account: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """A Stripe Checkout Session buying prepaid credit; credited when Stripe confirms."""
    return payments.checkout(svc, account, body)


@router.post("/v1/billing/postpaid", status_code=201)
def postpaid(account: Buyer, svc: ServicesDep) -> dict[str, Any]:
    """A Checkout Session that saves a card and subscribes to metered usage billing."""
    return payments.postpaid(svc, account)


@router.post("/v1/billing/connect", status_code=201)
def connect(seller: Seller, svc: ServicesDep) -> dict[str, Any]:
    """Stripe Connect (Express) onboarding: the seller's account and a fresh onboarding link."""
    return payments.connect(svc, seller)


@router.post("/v1/billing/webhook")
async def webhook(
    request: Request, svc: ServicesDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> dict[str, Any]:
    """Stripe's events, verified on the raw body; an event id seen before does nothing."""
    payload = await request.body()
    return await svc.billing.webhook(payload, stripe_signature)


def _slugs(svc: Services) -> dict[int, str]:
    with svc.sessions() as db:
        return {i: s for i, s in db.execute(select(Listing.id, Listing.slug)).all()}


def _month(month: str | None) -> str:
    return month or f"{datetime.now(UTC):%Y-%m}"


def _answer(statement: dict[str, Any], fmt: str, name: str) -> Any:
    if fmt == "csv":
        return Response(statements.to_csv(statement), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{name}-{statement["month"]}.csv"'})
    return statement


@router.get("/v1/billing/statement")
def buyer_statement(account: Buyer, svc: ServicesDep, month: Month = None,
                    format: Format = "json") -> Any:
    """The buyer's month from the ledger: charges per listing, what went to the card."""
    st = statements.buyer(svc.engine, account.id, _month(month), _slugs(svc))
    return _answer(st, format, "statement")


@router.get("/v1/billing/seller-statement")
def seller_statement(seller: Seller, svc: ServicesDep, month: Month = None,
                     format: Format = "json") -> Any:
    """The seller's month: calls, gross, platform fee, share per listing, and the payout."""
    st = statements.seller(svc.engine, seller.id, _month(month), _slugs(svc))
    return _answer(st, format, "seller-statement")
