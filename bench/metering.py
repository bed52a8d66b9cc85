"""Benchmark metering: reserve+commit pairs per second with concurrent callers, and ledger
flush events per second; on the embedded Valkey (appendfsync always), when reachable the
system Redis and PostgreSQL, and with ``--cluster`` a 3-node Redis Cluster started here
(tests/redis_cluster.py, appendfsync always). Prints figures measured in this one run.

    .venv/bin/python bench/metering.py [--seconds 5] [--callers 64] [--events 50000] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metering import CallSpec, Event, Flusher, Meter, Snapshot, add_credit  # noqa: E402
from storefront.db import make_engine, migrate  # noqa: E402
from storefront.embedded import EmbeddedRedis  # noqa: E402
from storefront.services import async_redis, sync_redis  # noqa: E402


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def is_cluster(url: str) -> bool:
    return url.startswith("cluster+")


async def pairs_per_second(url: str, engine, seconds: float, callers: int,
                           leases: bool) -> tuple[float, float]:
    if is_cluster(url):
        client = async_redis(url.removeprefix("cluster+"), cluster=True)
    else:
        client = aioredis.Redis.from_url(url, max_connections=256, retry=Retry(NoBackoff(), 0))
    ns = f"bench{uuid.uuid4().hex[:6]}:"
    # on a cluster, one account per shard (one shard is one slot: one primary's work)
    accounts = [random.randint(10**6, 10**8) * 16 + i
                for i in range(16 if is_cluster(url) else 1)]
    for acct in accounts:
        add_credit(engine, acct, 10**15, reason="grant", reference=f"bench:{uuid.uuid4().hex}")

    async def load(a: int) -> Snapshot:
        from metering import snapshot

        return snapshot(engine, a)

    meter = Meter(client, fee_bps=2000, load_snapshot=load, namespace=ns, leases=leases)
    done = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            # the gateway's request id (storefront/gateway.py), not uuid4: a third of its cost
            res = await meter.reserve(CallSpec(
                request_id=f"{time.time_ns() // 1000:014x}{os.urandom(9).hex()}",
                account_id=accounts[i % len(accounts)],
                api_key_id=i, listing_id=1,
                listing_version_id=1, seller_id=2, price=2000, trial_calls=0,
                key_rps=1e6, key_burst=10**6))
            await meter.commit(res, latency_us=10)
            latencies.append(time.perf_counter() - t0)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    await meter.close()
    for stream in meter.names.streams:
        await client.delete(stream)
    for holds, holdq in meter.names.hold_sets:
        await client.delete(holds, holdq)
    await client.aclose()
    return done / elapsed, latencies[len(latencies) // 2] * 1000


def flush_rate(url: str, engine, events: int) -> float:
    client = sync_redis(url.removeprefix("cluster+"), cluster=True) if is_cluster(url) \
        else redis.Redis.from_url(url)
    ns = f"benchf{uuid.uuid4().hex[:6]}:"
    flusher = Flusher(client, engine, namespace=ns, consumer="bench")
    flusher.lag()  # creates the consumer groups
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        # the gateway's request ids (storefront/gateway.py): time-ordered, so the ledger's
        # id index grows at its end (uuid4 ids land all over it: ~3x slower on SQLite)
        e = Event(id=f"{time.time_ns() // 1000:014x}{os.urandom(9).hex()}",
                  account_id=1 + i % 50, api_key_id=1, listing_id=1, listing_version_id=1,
                  seller_id=2, kind="paid", price=2000, seller_share=1600, platform_fee=400,
                  latency_us=10, ts_ms=now)
        pipe.xadd(flusher.streams[e.account_id % len(flusher.streams)], e.fields())
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    flusher._down_until.clear()
    t0 = time.perf_counter()
    written = flusher.drain()
    elapsed = time.perf_counter() - t0
    assert written == events, (written, events)
    client.delete(*flusher.streams)
    return events / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--cluster", action="store_true", help="also a 3-node Redis Cluster")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aimarket-bench-metering-"))
    embedded = EmbeddedRedis(tmp)
    redis_targets = {"embedded valkey (appendfsync always)": embedded.start()}
    if reachable(6379):
        redis_targets["system redis (no persistence)"] = "redis://127.0.0.1:6379/5"
    cluster = None
    if args.cluster:
        from tests.redis_cluster import MISSING, LocalCluster

        if MISSING:
            print(f"no cluster: {MISSING}")
        else:
            cluster = LocalCluster(tmp / "cluster")
            cluster.start()
            redis_targets["redis cluster, 3 primaries (always)"] = f"cluster+{cluster.url}"
    sqlite = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    migrate(sqlite)
    sql_targets = {"sqlite": sqlite}
    if reachable(5432):
        import psycopg

        name = f"aimarket_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        pg = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        migrate(pg)
        sql_targets["postgresql"] = pg
    try:
        print(f"paid-call decisions (reserve + commit), {args.callers} concurrent callers, "
              f"{args.seconds:g} s, one process:")
        for name, url in redis_targets.items():
            rates = {}
            for leases in (False, True):
                rate, p50 = asyncio.run(pairs_per_second(url, sqlite, args.seconds,
                                                         args.callers, leases))
                rates[leases] = rate
                how = "leased, group commit" if leases else "per call (2 scripts)"
                print(f"  {name:38} {how:22} {rate:>9.0f} calls/s   p50 {p50:.2f} ms")
            print(f"  {'':38} {'leased / per call':22} {rates[True] / rates[False]:>9.2f}")
        print(f"ledger flush of {args.events} events (Redis stream -> SQL, exactly once):")
        for rname, url in redis_targets.items():
            for sname, engine in sql_targets.items():
                rate = flush_rate(url, engine, args.events)
                print(f"  {rname[:22]:22} -> {sname:12} {rate:>9.0f} events/s")
    finally:
        embedded.stop()
        if cluster is not None:
            cluster.stop()
        for engine in sql_targets.values():
            engine.dispose()
        if "postgresql" in sql_targets:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("the paid call with vs without metering: bench/paid_call.py")


if __name__ == "__main__":
    main()
