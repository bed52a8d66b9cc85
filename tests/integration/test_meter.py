"""Metering on the real Redis servers: races, holds, hydration from the ledger, the flusher."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from types import SimpleNamespace

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from sqlalchemy import select

from metering import (
    CallSpec,
    DemoMeter,
    Flusher,
    Meter,
    UsageEvent,
    add_credit,
    balance,
    snapshot,
)
from metering import flusher as flusher_module
from storefront.db import make_engine, migrate


@pytest.fixture(scope="module")
def engine(stack):
    e = make_engine(stack["db"].replace("postgresql://", "postgresql+psycopg://"))
    migrate(e)
    yield e
    e.dispose()


@pytest.fixture(params=["per-call", "leased"])
async def meter(stack, engine, request):
    client = aioredis.Redis.from_url(stack["redis"], max_connections=512)

    async def load(account_id):
        return await asyncio.to_thread(snapshot, engine, account_id)

    m = Meter(client, fee_bps=2000, load_snapshot=load, namespace=stack["ns"] + "m:",
              leases=request.param == "leased")
    yield m
    await m.close()
    await client.aclose()


def account() -> int:
    return random.randint(10**6, 10**9)


def call(acct: int, *, price: int = 2000, trial: int = 0, listing: int = 1) -> CallSpec:
    return CallSpec(request_id=uuid.uuid4().hex, account_id=acct, api_key_id=1,
                    listing_id=listing, listing_version_id=1, seller_id=7, price=price,
                    trial_calls=trial)


async def test_trial_race_gives_exactly_the_trial(meter):
    acct = account()
    results = await asyncio.gather(*(meter.reserve(call(acct, trial=5)) for _ in range(200)))
    kinds = [r.kind for r in results if r.ok]
    assert kinds == ["trial"] * 5
    assert sum(not r.ok for r in results) == 195


async def test_credits_never_go_negative_under_concurrency(meter, engine):
    acct = account()
    granted = 1_000_000

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, granted, reason="grant",
                                       reference=f"grant:{uuid.uuid4().hex}")

    await meter.add_credits(acct, granted, record)
    prices = [random.randint(1, 10_000) for _ in range(500)]
    results = await asyncio.gather(*(meter.reserve(call(acct, price=p)) for p in prices))
    spent = sum(r.cost for r in results if r.ok)
    assert 0 <= granted - spent == await meter.credits(acct)
    assert all(r.credits_remaining >= 0 for r in results)
    refused = [p for p, r in zip(prices, results, strict=True) if not r.ok]
    if meter.leases is None:  # decided one by one in Redis: refused only when it did not fit
        assert all(p > granted - spent for p in refused) or not refused
    elif granted > spent:  # leases may refuse while others hold credit; none of it is lost:
        last = await meter.reserve(call(acct, price=granted - spent))  # the rest still buys
        assert last.ok and await meter.credits(acct) == 0


async def test_release_gives_back_exactly_what_was_held(meter, engine):
    acct = account()

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, 10_000, reason="grant",
                                       reference=f"grant:{uuid.uuid4().hex}")

    await meter.add_credits(acct, 10_000, record)
    trial = await meter.reserve(call(acct, trial=1))
    paid = await meter.reserve(call(acct, trial=1, price=3000))
    assert (trial.kind, paid.kind, paid.credits_remaining) == ("trial", "paid", 7000)
    await meter.release(paid)
    await meter.release(trial)
    assert await meter.credits(acct) == 10_000
    again = await meter.reserve(call(acct, trial=1))
    assert again.kind == "trial"  # the released trial call is available again


async def test_replayed_grant_is_applied_once(meter, engine):
    acct = account()
    ref = f"grant:{uuid.uuid4().hex}"

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, 5000, reason="grant",
                                       reference=ref)

    assert await meter.add_credits(acct, 5000, record) == 5000
    assert await meter.add_credits(acct, 5000, record) == 5000
    assert balance(engine, acct) == 5000


async def test_counters_are_rebuilt_from_the_ledger_when_redis_lost_them(meter, engine, stack):
    acct = account()

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, 50_000, reason="grant",
                                       reference=f"grant:{uuid.uuid4().hex}")

    await meter.add_credits(acct, 50_000, record)
    res = [await meter.reserve(call(acct, trial=2, price=1000)) for _ in range(3)]
    for r in res:
        await meter.commit(r, latency_us=10)
    flusher = Flusher(redis.Redis.from_url(stack["redis"]), engine,
                      namespace=stack["ns"] + "m:", consumer="t")
    flusher.drain()
    # Redis forgets the account (as after a failover without persistence)
    await meter.redis.delete(*meter._keys(acct), meter._trial_key(acct, 1))
    after = await meter.reserve(call(acct, trial=2, price=1000))
    assert after.kind == "paid"  # the two trial calls are remembered by the ledger
    assert after.credits_remaining == 50_000 - 1000 - 1000


async def test_flusher_writes_each_event_once_even_when_redelivered(meter, engine, stack):
    acct = account()
    ns = stack["ns"] + "f:"
    client = aioredis.Redis.from_url(stack["redis"])
    m = Meter(client, fee_bps=2000, load_snapshot=meter._load_snapshot, namespace=ns)
    for _ in range(20):
        r = await m.reserve(call(acct, trial=100))
        await m.commit(r, latency_us=5)
    sync = redis.Redis.from_url(stack["redis"])
    dead = Flusher(sync, engine, namespace=ns, consumer="dead", claim_idle_ms=0)
    stream = m.names.stream(m.names.shard(acct))  # the account's shard
    dead._ensure_group(stream)
    # a flusher reads a batch and dies before acknowledging it
    sync.xreadgroup(dead.group, "dead", {stream: ">"}, count=8)
    live = Flusher(sync, engine, namespace=ns, consumer="live", claim_idle_ms=0)
    assert live.drain() == 20
    # the dead consumer's batch, written again by a replay, changes nothing
    from metering.ledger import Event, write_events

    assert write_events(engine, [Event.from_fields({**_fake_fields(acct)})]) == 1
    assert write_events(engine, [Event.from_fields({**_fake_fields(acct)})]) == 0
    assert snapshot(engine, acct).trials == {1: 21}
    assert live.lag() == 0
    await client.aclose()


def _fake_fields(acct: int) -> dict[str, str]:
    return {"e": f"fixed-{acct}|{acct}||1|1|7|trial|0|0|0|1|1700000000000"}


async def _funded(meter, engine, amount: int) -> int:
    acct = account()

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, amount, reason="grant",
                                       reference=f"grant:{uuid.uuid4().hex}")

    await meter.add_credits(acct, amount, record)
    return acct


def limited(acct: int, key: int, **kw) -> CallSpec:
    base = call(acct, price=kw.pop("price", 1000))
    return dataclasses.replace(base, api_key_id=key, request_id=uuid.uuid4().hex, **kw)


async def test_rate_limit_cannot_be_bypassed_by_concurrency(meter, engine):
    acct = await _funded(meter, engine, 10**9)
    key = random.randint(10**6, 10**9)
    spec = dict(key_rps=0.01, key_burst=10)  # a burst of 10, then one call per 100 s
    results = await asyncio.gather(*(meter.reserve(limited(acct, key, **spec))
                                     for _ in range(200)))
    assert sum(r.ok for r in results) == 10
    refused = [r for r in results if not r.ok]
    assert {r.refusal for r in refused} == {"rate"}
    assert all(r.retry_after_ms > 0 and r.rate_limit == 10 for r in refused)
    assert await meter.credits(acct) == 10**9 - 10 * 1000  # refused calls hold nothing


async def test_listing_limit_applies_per_key_and_listing(meter, engine):
    acct = await _funded(meter, engine, 10**9)
    key = random.randint(10**6, 10**9)
    spec = dict(key_rps=1000, key_burst=1000, listing_rps=0.01, listing_burst=3)
    first = await asyncio.gather(*(meter.reserve(limited(acct, key, listing_id=1, **spec))
                                   for _ in range(20)))
    other = await asyncio.gather(*(meter.reserve(limited(acct, key, listing_id=2, **spec))
                                   for _ in range(20)))
    assert sum(r.ok for r in first) == 3 and sum(r.ok for r in other) == 3
    ok = next(r for r in first if r.ok)
    assert ok.rate_limit == 3  # the tighter bucket is the one reported


async def test_spend_caps_hold_under_concurrency_and_refund_on_release(meter, engine):
    acct = await _funded(meter, engine, 10**9)
    key = random.randint(10**6, 10**9)
    results = await asyncio.gather(*(meter.reserve(limited(acct, key, cap_day=10_000))
                                     for _ in range(100)))
    ok = [r for r in results if r.ok]
    assert len(ok) == 10 and {r.refusal for r in results if not r.ok} == {"cap_day"}
    await meter.release(ok[0])  # a failed call gives its spend back
    again = await meter.reserve(limited(acct, key, cap_day=10_000))
    assert again.ok
    monthly = await asyncio.gather(*(meter.reserve(limited(acct, key, cap_month=15_000))
                                     for _ in range(20)))
    assert sum(r.ok for r in monthly) == 5  # 10 already spent this month, cap 15
    assert {r.refusal for r in monthly if not r.ok} == {"cap_month"}


@pytest.fixture
async def fresh_meter(stack, meter):
    """A meter on a namespace of its own: nothing else holds, sweeps or counts there."""
    client = aioredis.Redis.from_url(stack["redis"], max_connections=512)
    yield Meter(client, fee_bps=2000, load_snapshot=meter._load_snapshot,
                namespace=f"{stack['ns']}{uuid.uuid4().hex[:8]}:", leases=False)
    await client.aclose()


def _swept() -> float:
    return REGISTRY.get_sample_value("aimarket_reservations_released_total",
                                     {"why": "swept"}) or 0.0


async def test_flusher_sweep_refunds_holds_of_calls_that_never_finished(
        fresh_meter, engine, stack, monkeypatch):
    m = fresh_meter
    acct = await _funded(m, engine, 50_000)
    paid = await m.reserve(call(acct, price=20_000))
    trial = await m.reserve(call(acct, trial=1, listing=2))
    assert (paid.kind, trial.kind) == ("paid", "trial") and await m.credits(acct) == 30_000
    # The sweeper production runs: the flusher's, with the production hold timeout.
    flusher = Flusher(redis.Redis.from_url(stack["redis"]), engine, namespace=m.ns,
                      consumer="sweeper", hold_timeout_s=120)
    t0, before = time.time(), _swept()

    def clock(now: float) -> None:  # the flusher's clock only; Redis stamps holds itself
        monkeypatch.setattr(flusher_module, "time",
                            SimpleNamespace(time=lambda: now, monotonic=time.monotonic))

    clock(t0 + 119)
    assert flusher.sweep() == 0  # the calls may still be running: their holds stay
    assert await m.credits(acct) == 30_000
    clock(t0 + 121)  # past the hold timeout: the worker died, both holds are refunded
    assert flusher.sweep() == 2
    assert _swept() == before + 2
    assert await m.credits(acct) == 50_000
    assert (await m.reserve(call(acct, trial=1, listing=2))).kind == "trial"  # given back
    assert await m.commit(paid, latency_us=1) is False  # too late: not charged
    assert await m.release(paid) is False  # and not refunded twice
    assert await m.credits(acct) == 50_000
    flusher.drain()
    with engine.connect() as conn:
        ids = [paid.call.request_id, trial.call.request_id]
        assert conn.execute(select(UsageEvent.id).where(UsageEvent.id.in_(ids))).all() == []
    assert balance(engine, acct) == 50_000


async def test_demo_quota_per_visitor_per_day_is_race_proof(fresh_meter):
    """The live demo path (storefront/tryit.py): DemoMeter.reserve under concurrency."""
    m = fresh_meter
    demos = DemoMeter(m)
    visitor = uuid.uuid4().hex

    def demo_spec() -> CallSpec:
        return call(0, price=2000, trial=5)  # an anonymous visitor on a priced listing

    results = await asyncio.gather(*(demos.reserve(demo_spec(), visitor, 5) for _ in range(50)))
    ok = [r for r in results if r.ok]
    assert len(ok) == 5
    assert all(r.kind == "demo" and r.cost == 0 for r in ok)  # never charged
    assert sorted(r.trial_remaining for r in ok) == [0, 1, 2, 3, 4]
    assert {r.refusal for r in results if not r.ok} == {"demo"}
    assert await demos.remaining(visitor, 5) == 0
    # A failed call gives its demo call back, a committed one keeps it; both race-proof too.
    assert await m.release(ok[0]) and await m.commit(ok[1], latency_us=1)
    assert await demos.remaining(visitor, 5) == 1
    again = await asyncio.gather(*(demos.reserve(demo_spec(), visitor, 5) for _ in range(20)))
    assert sum(r.ok for r in again) == 1
    other = await demos.reserve(demo_spec(), uuid.uuid4().hex, 5)  # another visitor
    assert (other.ok, other.kind, other.trial_remaining) == (True, "demo", 4)


async def test_reconcile_reports_and_repairs_drift_the_ledger_wins(meter, engine, stack):
    from metering import reconcile

    ns = stack["ns"] + "m:"
    acct = await _funded(meter, engine, 40_000)
    r1 = await meter.reserve(call(acct, trial=1, price=5000))
    await meter.commit(r1, latency_us=1)  # a trial call, committed
    held = await meter.reserve(call(acct, trial=1, price=5000))  # a paid call in flight
    assert held.kind == "paid"
    sync = redis.Redis.from_url(stack["redis"])
    flusher = Flusher(sync, engine, namespace=ns, consumer="rec")
    checked, drifts, _ = reconcile(sync, engine, flusher, namespace=ns, repair=False)
    assert checked >= 1 and not [d for d in drifts if d.account_id == acct]
    sync.set(meter.names.credit(acct), 999_999)  # Redis drifts (a bug, an operator's typo...)
    sync.set(meter.names.trial(acct, 1), 0)
    _, drifts, _ = reconcile(sync, engine, flusher, namespace=ns, repair=False)
    mine = {d.counter: d for d in drifts if d.account_id == acct}
    assert mine["credits"].redis_value == 999_999 and mine["credits"].ledger_value == 35_000
    assert mine["trial:1"].ledger_value == 1 and not mine["credits"].repaired
    _, drifts, _ = reconcile(sync, engine, flusher, namespace=ns, repair=True)
    assert all(d.repaired for d in drifts if d.account_id == acct)
    assert await meter.credits(acct) == 35_000  # the ledger's balance minus the hold
    _, drifts, _ = reconcile(sync, engine, flusher, namespace=ns, repair=False)
    assert not [d for d in drifts if d.account_id == acct]
