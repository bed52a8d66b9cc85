"""The marketplace's tables (the ledger's live in ``metering.ledger`` on the same metadata)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from metering import Base, utcnow

from . import handles

ROLES = ("buyer", "seller", "admin")  # each role can do what the ones before it can
SIGNUP_ROLES = ("buyer", "seller")  # what anyone may sign up as; admins are made, not signed up
SignupRole = Literal["buyer", "seller"]


def holders(role: str) -> tuple[str, ...]:
    """The roles allowed where ``role`` is needed: a seller may buy, an admin may do all."""
    return ROLES[ROLES.index(role):]


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Access tokens carry the epoch they were issued in; raising it revokes them all.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The public name on listings and /sellers/{handle} (storefront/handles.py); unique.
    handle: Mapped[str | None] = mapped_column(String(40), nullable=True, unique=True)


event.listen(Account, "before_insert", handles.assign)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(120), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rate_limit_rps: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_limit_burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spend_cap_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # micro-units
    spend_cap_month: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Listing(Base):
    __tablename__ = "listings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    seller_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    title: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(60), index=True)
    task: Mapped[str] = mapped_column(String(40), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|listed|delisted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The newest live version, its price and latency: kept by database triggers on
    # listing_versions (migration 0009), read by the catalog; never written by the app.
    live_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    live_price: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    live_latency_us: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Visible buyers' reviews: how many, and their average in thousandths of a star (None:
    # review: 0). Written by storefront/ratings.py with each review change (migration 0012).
    rating_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rating_milli: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ListingVersion(Base):
    __tablename__ = "listing_versions"
    __table_args__ = (UniqueConstraint("listing_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    listing_id: Mapped[int] = mapped_column(ForeignKey("listings.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    model_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest_json: Mapped[str] = mapped_column(Text)
    price: Mapped[int] = mapped_column(BigInteger)  # micro-units per paid call
    trial_calls: Mapped[int] = mapped_column(Integer)
    export_price: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    opset: Mapped[int] = mapped_column(Integer)
    latency_us: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending_review")
    review_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64), default="", index=True)
    sketch: Mapped[str] = mapped_column(Text, default="{}")
    findings: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of {code, message}
    license: Mapped[str] = mapped_column(String(100), default="")
    rights_attested_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # Deprecated by its seller: pinned calls get Deprecation / Sunset headers until sunset_at,
    # then 410; unpinned calls go to a newer live version (storefront/lifecycle.py).
    deprecated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    sunset_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Review(Base):
    """Audit log of moderation decisions."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    listing_version_id: Mapped[int] = mapped_column(ForeignKey("listing_versions.id"), index=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ListingReview(Base):
    """A buyer's rating of a listing: one per buyer and listing, editable; the seller may
    reply once; an admin may hide it (the hiding is in the audit log)."""

    __tablename__ = "listing_reviews"
    __table_args__ = (UniqueConstraint("listing_id", "buyer_id",
                                       name="uq_listing_reviews_buyer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    listing_id: Mapped[int] = mapped_column(ForeignKey("listings.id"))
    buyer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    stars: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    replied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Purchase(Base):
    """An export license: a buyer bought the right to export a listing."""

    __tablename__ = "purchases"
    __table_args__ = (UniqueConstraint("buyer_id", "listing_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    listing_id: Mapped[int] = mapped_column(ForeignKey("listings.id"))
    price: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Export(Base):
    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    listing_version_id: Mapped[int] = mapped_column(ForeignKey("listing_versions.id"))
    purchase_id: Mapped[str] = mapped_column(ForeignKey("purchases.id"))
    target: Mapped[str] = mapped_column(String(20))
    license_id: Mapped[str] = mapped_column(String(32), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    agreement: Mapped[float] = mapped_column(Float)
    max_diff: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    precision: Mapped[str] = mapped_column(String(8), default="fp32", server_default="fp32")
    # the model carries this licence's watermark in its weights (export/watermark.py)
    watermarked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ExportJob(Base):
    """A bundle the site builds in the background (storefront/export_jobs.py): queued ->
    building -> done (with its export) or failed (with the reason the buyer reads)."""

    __tablename__ = "export_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    slug: Mapped[str] = mapped_column(String(80))
    target: Mapped[str] = mapped_column(String(20))
    precision: Mapped[str | None] = mapped_column(String(8), nullable=True)
    state: Mapped[str] = mapped_column(String(12), default="queued")
    export_id: Mapped[str | None] = mapped_column(ForeignKey("exports.id"), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EdgeReceipt(Base):
    """One accepted usage receipt of a kit (export/receipts.py): the chain of an export, in
    order; (export, seq) is unique, so a receipt is accepted and charged once."""

    __tablename__ = "edge_receipts"
    __table_args__ = (UniqueConstraint("export_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("exports.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    calls: Mapped[int] = mapped_column(BigInteger)
    counter: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[str] = mapped_column(String(40))
    period_end: Mapped[str] = mapped_column(String(40))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(120))
    event_id: Mapped[str] = mapped_column(String(80))  # the usage event (kind edge) it is in
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KitOrder(Base):
    __tablename__ = "kit_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("exports.id"))
    shipping_address: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    tracking: Mapped[str] = mapped_column(String(100), default="")
    history: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AlertRule(Base):
    """A key's usage alert thresholds and webhook (storefront/alerts.py). The webhook secret
    is never stored: it is derived from the app's signing key and ``secret_salt``."""

    __tablename__ = "alert_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    daily_cap_percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    credits_below: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # micro-units
    trial_used_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    secret_salt: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AlertState(Base):
    """One threshold of one rule: crossed (fired once) or armed. ``scope`` is the UTC day of
    a daily-cap threshold, the listing's slug of a trial one, '' for credits."""

    __tablename__ = "alert_states"
    __table_args__ = (UniqueConstraint("rule_id", "kind", "scope", name="uq_alert_states"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id"))
    kind: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(80), default="")
    crossed: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    detail: Mapped[str] = mapped_column(Text, default="")  # the banner's sentence


class AlertDelivery(Base):
    """The webhook outbox: one signed POST to send, retried with backoff until delivered or
    out of attempts."""

    __tablename__ = "alert_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON bytes that are signed and sent
    status: Mapped[str] = mapped_column(String(16), default="pending")  # delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
