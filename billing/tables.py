"""Billing's tables: who is who at Stripe, checkouts, the usage outbox, webhooks seen, payouts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering import Base, utcnow


class BillingProfile(Base):
    """An account's Stripe identities: Customer (buyer), metered subscription (postpaid) and
    Connect account (seller). ``sync_lock_until`` keeps one usage sender per customer."""

    __tablename__ = "billing_profiles"
    account_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    subscription_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    postpaid_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set when the subscription ends or its invoice fails: calls from then on are prepaid.
    postpaid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    credit_line: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-units
    connect_account_id: Mapped[str | None] = mapped_column(String(64), unique=True,
                                                           nullable=True)
    payouts_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    sync_lock_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    sync_lock_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CheckoutRecord(Base):
    """A Checkout Session we created: what it is for and for how much (never trust the
    webhook's amount alone)."""

    __tablename__ = "billing_checkouts"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # cs_...
    account_id: Mapped[int] = mapped_column(Integer, index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # credits | postpaid | an item's kind
    amount: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-units (paid)
    # what a checkout of an item pays for (an export licence: the listing's slug)
    item: Mapped[str | None] = mapped_column(String(80), nullable=True)
    url: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | completed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageReport(Base):
    """The outbox: one aggregated meter event per (customer, batch of paid calls). Built from
    the ledger in one transaction (each usage event names its report in ``billed_in``), sent
    with a deterministic identifier and idempotency key until Stripe acknowledges it."""

    __tablename__ = "billing_usage_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(Integer, index=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    month: Mapped[str] = mapped_column(String(7))  # YYYY-MM of every call in it
    calls: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-units
    event_ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # pending -> acked (Stripe holds it) -> sent (credited back); or rejected (Stripe refused it
    # for good: the calls stay paid from prepaid credit)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def identifier(self) -> str:
        # The customer id makes it unique across installations sharing a Stripe account.
        return f"aimarket-usage-{self.customer_id}-{self.id}"


class StripeEvent(Base):
    """Webhook events processed: an event id seen before does nothing."""

    __tablename__ = "billing_stripe_events"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Payout(Base):
    """A seller's payout for a period (YYYY-MM): the transfer's idempotency key derives from
    this row, so a rerun never pays twice."""

    __tablename__ = "billing_payouts"
    __table_args__ = (UniqueConstraint("seller_id", "period"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seller_id: Mapped[int] = mapped_column(Integer, index=True)
    period: Mapped[str] = mapped_column(String(7))
    earned: Mapped[int] = mapped_column(BigInteger)  # seller share accrued in the period
    amount: Mapped[int] = mapped_column(BigInteger)  # micro-units paid (whole cents)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|paid|nothing
    transfer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def idempotency_key(self, destination: str) -> str:
        # The attempt number is part of it: Stripe replays even a 500 for a key it has seen;
        # a transfer made by an attempt whose reply was lost is found by its metadata first.
        return f"aimarket-payout-{self.id}-{self.period}-{destination}-{self.attempts}"
