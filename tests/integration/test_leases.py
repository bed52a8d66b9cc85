"""Leases (metering/lease.py) on the real Redis servers: several meters stand for several
gateway processes on one Redis; every guarantee of the per-call reservation must hold."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from metering import CallSpec, Event, Flusher, Meter, add_credit, reconcile, snapshot
from metering import flusher as flusher_module
from serving import InferenceFailed, PaymentRequired
from storefront.db import make_engine, migrate


@pytest.fixture(scope="module")
def engine(stack):
    e = make_engine(stack["db"].replace("postgresql://", "postgresql+psycopg://"))
    migrate(e)
    yield e
    e.dispose()


@pytest.fixture
def ns(stack):
    return f"{stack['ns']}{uuid.uuid4().hex[:8]}:"  # nothing else holds or sweeps here


@pytest.fixture
async def processes(stack, engine, ns):
    """Three meters, each with its own client: three gateway processes on one Redis."""
    async def load(account_id):
        return await asyncio.to_thread(snapshot, engine, account_id)

    clients = [aioredis.Redis.from_url(stack["redis"], max_connections=256) for _ in range(3)]
    meters = [Meter(c, fee_bps=2000, load_snapshot=load, namespace=ns) for c in clients]
    yield meters
    for m, c in zip(meters, clients, strict=True):
        await m.close()
        await c.aclose()


def flusher_for(stack, engine, ns) -> Flusher:
    return Flusher(redis.Redis.from_url(stack["redis"]), engine, namespace=ns,
                   consumer=f"f-{uuid.uuid4().hex[:6]}", hold_timeout_s=120)


async def funded(meter: Meter, engine, amount: int) -> int:
    acct = random.randint(10**6, 10**9)

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, amount, reason="grant",
                                       reference=f"grant:{uuid.uuid4().hex}")

    await meter.add_credits(acct, amount, record)
    return acct


def call(acct: int, *, price: int = 1000, key: int = 11, **kw) -> CallSpec:
    return CallSpec(request_id=uuid.uuid4().hex, account_id=acct, api_key_id=key,
                    listing_id=kw.pop("listing_id", 1), listing_version_id=1, seller_id=7,
                    price=price, trial_calls=kw.pop("trial_calls", 0), **kw)


def refuse(res):
    return PaymentRequired("refused", code="insufficient_credits")


async def one_call(meter: Meter, spec: CallSpec, fail: bool) -> str:
    """A paid call: 'ok' (committed), 'failed' (released) or 'refused'."""
    try:
        async with meter.hold(spec, refuse=refuse):
            await asyncio.sleep(0)  # the call's work: other calls interleave here
            if fail:
                raise InferenceFailed("the model failed")
        return "ok"
    except InferenceFailed:
        return "failed"
    except PaymentRequired:
        return "refused"


async def stream_events(meter: Meter) -> list[Event]:
    return [e for stream in meter.names.streams for _, fields in await meter.redis.xrange(stream)
            for e in Event.from_entry(fields)]


async def held(meter: Meter) -> int:
    """Holds in every shard."""
    return sum([await meter.redis.hlen(h) for h, _ in meter.names.hold_sets])


async def test_calls_through_many_processes_are_charged_exactly_once(processes, engine, stack,
                                                                     ns):
    granted, price = 500_000, 1000  # room for 500 calls; 900 are tried, a tenth fail
    acct = await funded(processes[0], engine, granted)
    specs = [(m, call(acct, price=price), i % 10 == 0)
             for i in range(300) for m in processes]
    outcomes = await asyncio.gather(*(one_call(m, s, f) for m, s, f in specs))
    ok = [s.request_id for (_, s, _), o in zip(specs, outcomes, strict=True) if o == "ok"]
    assert {o for (_, _, f), o in zip(specs, outcomes, strict=True) if f} <= {"failed",
                                                                              "refused"}
    assert "failed" in outcomes and "refused" in outcomes and 0 < len(ok) <= 500

    events = await stream_events(processes[0])
    assert sorted(e.id for e in events) == sorted(ok)  # each answered call once, no other
    assert all(e.seller_share + e.platform_fee == e.price == price for e in events)
    for m in processes:  # the app stops: unspent leases go back
        await m.close()
    assert await processes[0].credits(acct) == granted - price * len(ok)
    assert await held(processes[0]) == 0
    flusher = flusher_for(stack, engine, ns)
    flusher.drain()
    checked, drifts, _ = reconcile(flusher.redis, engine, flusher, namespace=ns, repair=False)
    assert checked == 1 and drifts == []


async def test_a_refused_call_first_takes_back_its_process_leases(processes, engine):
    acct = await funded(processes[0], engine, 10_000)
    a, b, _ = processes
    assert await one_call(a, call(acct, price=1000), False) == "ok"  # a leased 5 calls
    assert await a.credits(acct) == 9000
    # 9,000 fit only with the 4,000 of a's lease: the call takes them back and is served
    assert await one_call(a, call(acct, price=9000), False) == "ok"
    assert await a.credits(acct) == 0
    assert await one_call(b, call(acct, price=1000), False) == "refused"


async def test_a_dead_process_leases_come_back_through_the_sweeper(processes, engine, stack,
                                                                   ns, monkeypatch):
    acct = await funded(processes[0], engine, 100_000)
    dead, alive, _ = processes
    assert await one_call(dead, call(acct), False) == "ok"
    dead.leases = None  # the process is gone: it neither spends nor gives back its lease
    assert await alive.credits(acct) == 99_000  # a lease's rest is still the buyer's
    flusher = flusher_for(stack, engine, ns)
    flusher.drain()
    assert reconcile(flusher.redis, engine, flusher, namespace=ns, repair=False)[1] == []

    t0 = time.time()
    monkeypatch.setattr(flusher_module, "time",
                        SimpleNamespace(time=lambda: t0 + 121, monotonic=time.monotonic))
    assert flusher.sweep() >= 1  # past the hold timeout: the lease's rest is refunded
    assert await held(alive) == 0
    assert await alive.credits(acct) == 99_000
    assert reconcile(flusher.redis, engine, flusher, namespace=ns, repair=False)[1] == []
    last = await alive.reserve(call(acct, price=99_000))  # all of it can be spent again
    assert last.ok


async def test_rate_limit_across_processes_is_never_exceeded(processes, engine):
    acct = await funded(processes[0], engine, 10**9)
    # 10 calls at once, refilled once in 100 s: three processes together get 10
    results = await asyncio.gather(*(m.reserve(call(acct, key=77, key_rps=0.01, key_burst=10))
                                     for m in processes for _ in range(40)))
    assert sum(r.ok for r in results) == 10
    assert {r.refusal for r in results if not r.ok} == {"rate"}


async def test_spend_cap_across_processes_is_exact(processes, engine):
    acct = await funded(processes[0], engine, 10**9)
    results = await asyncio.gather(*(m.reserve(call(acct, key=78, cap_day=25_000))
                                     for m in processes for _ in range(30)))
    assert sum(r.ok for r in results) == 25  # all of the cap, never more
    assert {r.refusal for r in results if not r.ok} == {"cap_day"}


async def test_a_retried_group_commit_runs_once(processes, engine):
    meter = processes[0]
    acct = await funded(meter, engine, 100_000)
    res = await meter.reserve(call(acct))
    assert res.lease is not None
    names = meter.names
    shard = names.shard(acct)
    keys = [names.holds(shard), names.holdq(shard), names.stream(shard),
            names.lease_batch(shard, "retry-test")]
    line = f"{res.call.request_id}|{acct}|11|1|1|7|paid|1000|800|200|5|{int(time.time() * 1000)}"
    args = [1, res.lease.id, 1000, line]
    first = await meter._script("COMMIT_LEASED", keys, args)
    again = await meter._script("COMMIT_LEASED", keys, args)  # its reply was lost: retried
    assert [int(x) for x in first] == [int(x) for x in again] == [1]
    assert [e.id for e in await stream_events(meter)] == [res.call.request_id]


async def test_reconcile_under_traffic_never_reports_a_drift_that_is_not_there(
        processes, engine, stack, ns):
    """Gateways keep serving while an operator reconciles: leases are taken and given back,
    another process's flusher moves events into the ledger. None of that is drift."""
    acct = await funded(processes[0], engine, 10**8)
    for m in processes:  # leases go back within milliseconds: the race is run often
        assert m.leases is not None
        m.leases.idle_s, m.leases.max_age_s = 0.004, 0.02
    stop, lull = threading.Event(), threading.Event()
    other = flusher_for(stack, engine, ns)  # another gateway's flusher
    mover = threading.Thread(target=other.run, args=(stop,), kwargs={"block_ms": 5})
    mover.start()
    served = 0

    async def traffic(m: Meter) -> None:
        nonlocal served
        while not stop.is_set():
            if not lull.is_set():
                served += await one_call(m, call(acct, price=1000), False) == "ok"
            await asyncio.sleep(0.001)  # calls come and go: leases idle out between them

    def operator() -> list[Any]:
        mine = flusher_for(stack, engine, ns)
        seen: list[Any] = []
        deadline = time.monotonic() + 60
        # six passes under traffic, then on through a lull in the calls (gateways, leases and
        # the other flusher still running) until one pass finds the account settled: a busy
        # account is reported as busy, not compared, and under steady traffic it may stay so
        while len(seen) < 6 or (not any(r.checked for r in seen)
                                 and time.monotonic() < deadline):
            if len(seen) == 6:
                lull.set()
            seen.append(reconcile(mine.redis, engine, mine, namespace=ns, repair=False))
        stop.set()
        return seen

    callers = [asyncio.ensure_future(traffic(m)) for m in processes]
    try:
        passes = await asyncio.to_thread(operator)
    finally:
        stop.set()
        await asyncio.gather(*callers)
        mover.join(10)
    assert served > 0
    assert [d for r in passes for d in r.drifts] == []  # every pass: no drift reported
    assert sum(r.checked for r in passes) >= 1  # and the account was compared, settled
    for m in processes:
        await m.close()
    final = flusher_for(stack, engine, ns)
    assert reconcile(final.redis, engine, final, namespace=ns, repair=False) == (1, [], [])
