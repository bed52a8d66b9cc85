"""The SQL ledger: usage events and credit entries, the source of truth for money.

Redis counters are a cache of these tables; every balance is a sum over ``credit_entries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .bulk import write_encoded, write_events

__all__ = ["Base", "CreditEntry", "Event", "ListingCounter", "UsageEvent", "add_credit",
           "balance", "snapshot", "utcnow", "write_encoded", "write_events"]


class Base(DeclarativeBase):
    """Declarative base shared by every aimarket table (one metadata, one migration history)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UsageEvent(Base):
    """One answered call, written once by the flusher; the request id is the primary key."""

    __tablename__ = "usage_events"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(Integer)
    api_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    listing_id: Mapped[int] = mapped_column(Integer)
    listing_version_id: Mapped[int] = mapped_column(Integer)
    seller_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # trial | paid
    price: Mapped[int] = mapped_column(BigInteger)  # micro-units charged to the buyer
    seller_share: Mapped[int] = mapped_column(BigInteger)
    platform_fee: Mapped[int] = mapped_column(BigInteger)
    latency_us: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flushed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The usage report (billing) that told the payment processor about this paid call.
    billed_in: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_usage_account_time", "account_id", "created_at"),
        Index("ix_usage_unbilled", "account_id", "created_at",
              postgresql_where=text("billed_in IS NULL AND kind = 'paid'"),
              sqlite_where=text("billed_in IS NULL AND kind = 'paid'")),
        Index("ix_usage_billed_in", "billed_in"),
        Index("ix_usage_seller_time", "seller_id", "created_at"),
    )


class ListingCounter(Base):
    """Calls served per listing (trial, paid and demo events in the ledger), kept by the
    flusher in the transaction that writes the events: the catalog reads it, never a COUNT."""

    __tablename__ = "listing_counters"
    listing_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    calls_served: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class CreditEntry(Base):
    """A signed movement of prepaid credit; ``reference`` makes every movement happen once."""

    __tablename__ = "credit_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(Integer, index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))  # grant | usage | checkout | refund
    reference: Mapped[str] = mapped_column(String(128), unique=True)
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class Event:
    """A usage event as it travels through the Redis stream."""

    id: str
    account_id: int
    api_key_id: int | None
    listing_id: int
    listing_version_id: int
    seller_id: int
    kind: str
    price: int
    seller_share: int
    platform_fee: int
    latency_us: int
    ts_ms: int

    def encode(self) -> str:
        """One compact stream field: fewer arguments to send on the hot path."""
        return "|".join("" if v is None else str(v) for v in self.__dict__.values())

    def fields(self) -> dict[str, str]:
        return {"e": self.encode()}

    @classmethod
    def from_entry(cls, raw: dict[Any, Any]) -> list[Event]:
        """A stream entry's events: one (field ``e``) or a leased group commit's (``b``,
        one encoded event per line)."""
        value = raw.get(b"b", raw.get("b"))
        if value is None:
            return [cls.from_fields(raw)]
        text = value.decode() if isinstance(value, bytes) else str(value)
        return [cls.decode(line) for line in text.split("\n")]

    @classmethod
    def from_fields(cls, raw: dict[Any, Any]) -> Event:
        value = raw.get(b"e", raw.get("e"))
        return cls.decode(value.decode() if isinstance(value, bytes) else str(value))

    @classmethod
    def decode(cls, text: str) -> Event:
        (rid, account, key, listing, version, seller, kind, price, share, fee, latency,
         ts) = text.split("|")
        return cls(
            id=rid, account_id=int(account), api_key_id=int(key) if key else None,
            listing_id=int(listing), listing_version_id=int(version), seller_id=int(seller),
            kind=kind, price=int(price), seller_share=int(share), platform_fee=int(fee),
            latency_us=int(latency), ts_ms=int(ts),
        )


def _insert(engine: Engine, table: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def add_credit(
    engine: Engine, account_id: int, amount: int, *, reason: str, reference: str, note: str = "",
    conn: Connection | None = None,
) -> bool:
    """Record a credit movement once per ``reference``; False when it was already recorded.
    With ``conn`` it joins that transaction."""
    table = CreditEntry.__table__
    stmt = _insert(engine, table).on_conflict_do_nothing(index_elements=["reference"])
    row = {"account_id": account_id, "amount": amount, "reason": reason,
           "reference": reference, "note": note, "created_at": utcnow()}
    if conn is not None:
        return conn.execute(stmt.returning(table.c.id), row).first() is not None
    with engine.begin() as own:
        return own.execute(stmt.returning(table.c.id), row).first() is not None


def balance(engine: Engine, account_id: int) -> int:
    """The account's credit balance according to the ledger."""
    with engine.connect() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(
                CreditEntry.account_id == account_id
            )
        ).scalar_one()
    return int(total)


def snapshot(engine: Engine, account_id: int, now: datetime | None = None) -> Any:
    """The ledger's view of an account for rebuilding its Redis counters: credit balance,
    trial calls used per listing, and each key's spend this UTC day and month."""
    from .meter import Snapshot

    now = now or utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day, month = f"{now:%Y%m%d}", f"{now:%Y%m}"
    with engine.connect() as conn:
        trials = conn.execute(
            select(UsageEvent.listing_id, func.count())
            .where(UsageEvent.account_id == account_id, UsageEvent.kind == "trial")
            .group_by(UsageEvent.listing_id)
        ).all()
        def spent_since(start: datetime) -> list[Any]:
            return list(conn.execute(
                select(UsageEvent.api_key_id, func.sum(UsageEvent.price))
                .where(UsageEvent.account_id == account_id, UsageEvent.kind == "paid",
                       UsageEvent.created_at >= start)
                .group_by(UsageEvent.api_key_id)
            ).all())

        by_key = {f"m:{k}:{month}": int(v) for k, v in spent_since(month_start)}
        by_key.update({f"d:{k}:{day}": int(v) for k, v in spent_since(day_start)})
    return Snapshot(balance(engine, account_id), {int(lid): int(n) for lid, n in trials}, by_key)
