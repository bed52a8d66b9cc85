"""The SQL ledger: usage events and credit entries, the source of truth for money.

Redis counters are a cache of these tables; every balance is a sum over ``credit_entries``.
"""

from __future__ import annotations

from collections.abc import Iterable
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
        Index("ix_usage_listing", "listing_id"),
    )


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


_COLS = ("id", "account_id", "api_key_id", "listing_id", "listing_version_id", "seller_id",
         "kind", "price", "seller_share", "platform_fee", "latency_us", "created_at",
         "flushed_at")
_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's storage format for DateTime on SQLite


def write_events(engine: Engine, events: Iterable[Event]) -> int:
    """Write usage events and their credit debits in one transaction; duplicates are ignored
    (the event id is the primary key, a debit's reference is unique). Returns how many events
    were new. Safe to call again with the same events.

    Bulk paths: COPY into a staging table on PostgreSQL, executemany on SQLite.
    """
    now = utcnow()
    rows = [
        (e.id, e.account_id, e.api_key_id, e.listing_id, e.listing_version_id, e.seller_id,
         e.kind, e.price, e.seller_share, e.platform_fee, e.latency_us,
         datetime.fromtimestamp(e.ts_ms / 1000, UTC), now)
        for e in events
    ]
    if not rows:
        return 0
    cols = ", ".join(_COLS)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS usage_stage "
                        "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY usage_stage ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(f"INSERT INTO usage_events ({cols}) SELECT {cols} FROM usage_stage "
                        "ON CONFLICT (id) DO NOTHING")
            new = cur.rowcount
            cur.execute(
                "INSERT INTO credit_entries (account_id, amount, reason, reference, note, "
                "created_at) SELECT account_id, -price, 'usage', 'usage:' || id, '', created_at "
                "FROM usage_stage WHERE price > 0 ON CONFLICT (reference) DO NOTHING")
            cur.execute("TRUNCATE usage_stage")
            return int(new)
        stamped = [(*r[:11], r[11].strftime(_SQLITE_TS), r[12].strftime(_SQLITE_TS))
                   for r in rows]
        marks = ", ".join("?" * len(_COLS))
        result = conn.exec_driver_sql(
            f"INSERT OR IGNORE INTO usage_events ({cols}) VALUES ({marks})", stamped)
        debits = [(r[1], -r[7], f"usage:{r[0]}", r[11]) for r in stamped if r[7] > 0]
        if debits:
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO credit_entries (account_id, amount, reason, reference, "
                "note, created_at) VALUES (?, ?, 'usage', ?, '', ?)", debits)
        return int(result.rowcount)


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
