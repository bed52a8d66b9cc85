"""Calls served per listing: the counter the flusher keeps beside the ledger rows it writes,
exact under redelivery, backfilled by migration 0009; the listing row's newest live version."""

from __future__ import annotations

import random
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from alembic import command
from sqlalchemy import func, select, text

from metering import (
    CallSpec,
    Event,
    Flusher,
    ListingCounter,
    Meter,
    UsageEvent,
    add_credit,
    balance,
    snapshot,
    write_encoded,
)
from storefront.db import alembic_config, make_engine, migrate
from tests.conftest import HAVE_PG


@pytest.fixture(scope="module")
def engine(stack):
    e = make_engine(stack["db"])
    migrate(e)
    yield e
    e.dispose()


def _counter(engine, listing: int) -> int:
    with engine.connect() as conn:
        n = conn.execute(select(ListingCounter.calls_served)
                         .where(ListingCounter.listing_id == listing)).scalar()
    return int(n or 0)


def _ledger_calls(engine, listing: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).where(UsageEvent.listing_id == listing,
                                       UsageEvent.kind.in_(("trial", "paid", "demo")))
        ).scalar_one())


async def test_calls_served_equals_the_ledger_rows_after_flushes_and_redelivery(engine, stack):
    ns = stack["ns"] + f"c{uuid.uuid4().hex[:6]}:"
    client = aioredis.Redis.from_url(stack["redis"])

    async def load(account_id):
        return snapshot(engine, account_id)

    meter = Meter(client, fee_bps=2000, load_snapshot=load, namespace=ns)
    acct, listing = random.randint(10**6, 10**9), random.randint(10**6, 10**9)
    add_credit(engine, acct, 1_000_000, reason="grant", reference=f"grant:{uuid.uuid4().hex}")

    def spec(**kw) -> CallSpec:
        return CallSpec(request_id=uuid.uuid4().hex, account_id=acct, api_key_id=1,
                        listing_id=listing, listing_version_id=1, seller_id=7, price=2000,
                        trial_calls=3, **kw)

    for _ in range(3 + 25):  # three free trial calls, then 25 paid ones
        assert await meter.commit(await meter.reserve(spec()), latency_us=5)
    export = await meter.reserve(spec(charge_kind="export"))  # a purchase, not a call
    assert await meter.commit(export, latency_us=5)
    sync = redis.Redis.from_url(stack["redis"])
    dead = Flusher(sync, engine, namespace=ns, consumer="dead", claim_idle_ms=0, batch=10)
    stream = meter.names.stream(meter.names.shard(acct))  # the account's shard
    dead._ensure_group(stream)
    # a flusher reads a batch and dies before acknowledging it; another claims and writes it
    stranded = sync.xreadgroup(dead.group, "dead", {stream: ">"}, count=10)
    live = Flusher(sync, engine, namespace=ns, consumer="live", claim_idle_ms=0, batch=7)
    assert live.drain() == 29
    assert _counter(engine, listing) == _ledger_calls(engine, listing) == 28
    spent = balance(engine, acct)
    assert spent == 1_000_000 - 26 * 2000

    # the dead flusher wakes up and writes its batch again, one event twice: nothing changes
    payloads = [fields[b"e"].decode() for _mid, fields in stranded[0][1]]
    assert write_encoded(engine, payloads + payloads[:1]) == 0
    assert _counter(engine, listing) == _ledger_calls(engine, listing) == 28
    assert balance(engine, acct) == spent

    # new calls after the replay are counted once each
    for _ in range(4):
        assert await meter.commit(await meter.reserve(spec()), latency_us=5)
    assert live.drain() == 4
    assert _counter(engine, listing) == _ledger_calls(engine, listing) == 32

    # one write of old events and new ones debits the account once, by the new ones only
    spent = balance(engine, acct)
    fresh = [Event(id=uuid.uuid4().hex, account_id=acct, api_key_id=1, listing_id=listing,
                   listing_version_id=1, seller_id=7, kind="paid", price=price,
                   seller_share=price - price // 5, platform_fee=price // 5, latency_us=5,
                   ts_ms=1_700_000_000_000).encode() for price in (2000, 3001)]
    assert write_encoded(engine, payloads + fresh) == 2
    assert write_encoded(engine, fresh + payloads[:3]) == 0
    assert balance(engine, acct) == spent - 5001
    assert _counter(engine, listing) == _ledger_calls(engine, listing) == 34
    await client.aclose()


def test_the_flusher_writes_per_call_events_group_commits_and_skips_deleted_entries(
        engine, stack):
    """One stream, three shapes of entry as the gateway leaves them: a per-call commit (one
    ``e`` event), a leased group commit (``b``: three events, one per line) and an entry
    deleted while pending (no fields). The flusher writes the four events once each."""
    ns = stack["ns"] + f"f{uuid.uuid4().hex[:6]}:"
    sync = redis.Redis.from_url(stack["redis"])
    flusher = Flusher(sync, engine, namespace=ns, consumer="f")
    acct, listing = random.randint(10**6, 10**9), random.randint(10**6, 10**9)
    add_credit(engine, acct, 1_000_000, reason="grant", reference=f"grant:{uuid.uuid4().hex}")
    stream = flusher.streams[0]
    flusher.lag()  # the consumer groups
    events = [Event(id=uuid.uuid4().hex, account_id=acct, api_key_id=1, listing_id=listing,
                    listing_version_id=1, seller_id=7, kind="paid", price=1000 + i,
                    seller_share=800, platform_fee=200 + i, latency_us=5,
                    ts_ms=1_700_000_000_000) for i in range(5)]
    sync.xadd(stream, events[0].fields())
    sync.xadd(stream, {"b": "\n".join(e.encode() for e in events[1:4])})
    gone = sync.xadd(stream, events[4].fields())
    sync.xreadgroup(flusher.group, "f", {stream: ">"}, count=10)  # pending for this consumer
    sync.xdel(stream, gone)  # its fields are gone: a pending entry with nothing to write

    assert flusher.drain() == 2  # stream entries written (the deleted one is not counted)
    with engine.connect() as conn:
        ids = set(conn.execute(select(UsageEvent.id).where(UsageEvent.account_id == acct))
                  .scalars())
    assert ids == {e.id for e in events[:4]}
    assert balance(engine, acct) == 1_000_000 - sum(e.price for e in events[:4])
    assert _counter(engine, listing) == 4
    assert sync.xlen(stream) == 0
    # nothing is left pending: XAUTOCLAIM drops the deleted entry from the group's list
    assert sync.xpending(stream, flusher.group)["pending"] == 0
    sync.close()


def _fresh_databases() -> list[str]:
    return ["sqlite"] + (["postgresql"] if HAVE_PG else [])


@pytest.mark.parametrize("dialect", _fresh_databases())
def test_migration_backfills_counters_and_the_newest_live_version(dialect, tmp_path):
    if dialect == "sqlite":
        url, drop = f"sqlite:///{tmp_path / 'm.db'}", None
    else:
        import psycopg

        name = f"aimarket_mig_{uuid.uuid4().hex[:10]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url, drop = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name
    engine = make_engine(url)
    try:
        cfg = alembic_config(engine)
        command.upgrade(cfg, "0008_session_epoch")
        now = "2026-12-01 10:00:00"
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO accounts (id, email, name, password_hash, role, created_at) "
                f"VALUES (1, 's@example.com', 'S', 'x', 'seller', '{now}')"))
            for lid in (1, 2, 3):
                conn.execute(text(
                    "INSERT INTO listings (id, slug, seller_id, title, description, category, "
                    f"task, status, created_at) VALUES ({lid}, 'm{lid}', 1, 'M{lid}', '', 'c', "
                    f"'tensor', 'listed', '{now}')"))
            for vid, lid, version, status, price in ((1, 1, 1, "live", 100), (2, 1, 2, "live", 200),
                                                     (3, 1, 3, "rejected", 300),
                                                     (4, 2, 1, "live", 400)):
                conn.execute(text(
                    "INSERT INTO listing_versions (id, listing_id, version, model_sha256, "
                    "size_bytes, manifest_json, price, trial_calls, opset, latency_us, status, "
                    "review_reason, created_at, fingerprint, sketch, findings, license) VALUES "
                    f"({vid}, {lid}, {version}, 'x', 1, '{{}}', {price}, 0, 17, 10, '{status}', "
                    f"'', '{now}', '', '{{}}', '[]', '')"))
            kinds = ["paid"] * 5 + ["trial"] * 2 + ["demo"] + ["export"]  # 8 calls, 1 purchase
            for i, kind in enumerate(kinds * 2):
                lid = 1 if i < len(kinds) + 3 else 2
                conn.execute(text(
                    "INSERT INTO usage_events (id, account_id, listing_id, listing_version_id, "
                    "seller_id, kind, price, seller_share, platform_fee, latency_us, created_at, "
                    f"flushed_at) VALUES ('e{i}', 9, {lid}, 1, 1, '{kind}', 0, 0, 0, 1, '{now}', "
                    f"'{now}')"))
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            counters = dict(conn.execute(text(
                "SELECT listing_id, calls_served FROM listing_counters")).all())
            live = {lid: (vid, price) for lid, vid, price in conn.execute(text(
                "SELECT id, live_version_id, live_price FROM listings ORDER BY id")).all()}
        # listing 1: all 8 calls of the first half and 3 of the second; listing 2: the other 5
        assert counters == {1: 11, 2: 5, 3: 0}
        assert live == {1: (2, 200), 2: (4, 400), 3: (None, None)}
        with engine.begin() as conn:  # the triggers keep the row as versions change
            conn.execute(text("UPDATE listing_versions SET status = 'undeployed' WHERE id = 2"))
            conn.execute(text("UPDATE listing_versions SET status = 'live' WHERE id = 3"))
        with engine.connect() as conn:
            row = conn.execute(text("SELECT live_version_id, live_price FROM listings "
                                    "WHERE id = 1")).one()
        assert tuple(row) == (3, 300)
        command.downgrade(cfg, "0008_session_epoch")
        command.upgrade(cfg, "head")
    finally:
        engine.dispose()
        if drop:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
