"""Metering on a real 3-node Redis Cluster started here (tests/redis_cluster.py).

Every decision runs in one slot (the account's shard), so trial and credit races stay exact
with accounts spread over all three primaries; the flusher moves every shard's stream into
the ledger and reconcile compares across shards. The fault test runs `aimarket up` on the
cluster and SIGKILLs one primary under paid calls: the calls of accounts on that primary are
refused 503 and never charged while the other primaries keep serving theirs, and the ledger
holds exactly one event per 200 answer. A slot moved to another primary (a resharding) is
followed: the old primary's MOVED means nothing ran there, and nothing is lost or charged twice.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot
from sqlalchemy import create_engine, text

from metering import CallSpec, Flusher, Meter, add_credit, balance, reconcile, snapshot
from metering.keys import Keys
from storefront.db import make_engine, migrate
from storefront.services import async_redis, sync_redis
from tests.e2e.test_journey import BIN, running
from tests.helpers import v2_body
from tests.redis_cluster import MISSING, LocalCluster

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    e = make_engine(f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}")
    migrate(e)
    yield e
    e.dispose()


def _call(acct: int, *, price: int = 1000, trial: int = 0) -> CallSpec:
    return CallSpec(request_id=uuid.uuid4().hex, account_id=acct, api_key_id=acct,
                    listing_id=3, listing_version_id=3, seller_id=7, price=price,
                    trial_calls=trial)


@pytest.mark.parametrize("leases", [False, True], ids=["per-call", "leased"])
async def test_races_are_exact_across_shards_and_reconcile_reads_every_shard(
        cluster, engine, leases):  # type: ignore[no-untyped-def]
    ns = f"c{uuid.uuid4().hex[:6]}:"
    names = Keys(ns)
    client = async_redis(cluster.url, cluster=True)

    async def load(account_id: int):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(snapshot, engine, account_id)

    meter = Meter(client, fee_bps=2000, load_snapshot=load, namespace=ns, leases=leases)
    base = random.randint(10**6, 10**8) * names.shards
    accounts = [base + i for i in range(names.shards)]  # one account in every shard
    assert len({cluster.port_of(names.credit(a)) for a in accounts}) == 3  # on every primary
    price, calls_worth = 1000, 12
    for acct in accounts:
        async def record(acct: int = acct) -> bool:
            return await asyncio.to_thread(add_credit, engine, acct, price * calls_worth,
                                           reason="grant", reference=f"g:{uuid.uuid4().hex}")
        await meter.add_credits(acct, price * calls_worth, record)

    async def one(acct: int, trial: int) -> str:
        res = await meter.reserve(_call(acct, price=price, trial=trial))
        if not res.ok:
            return res.refusal
        assert await meter.commit(res, latency_us=3)
        return res.kind

    # 3 trial calls, then 12 calls' worth of credit; 40 calls at once per account
    outcomes = await asyncio.gather(*(one(a, 3) for a in accounts for _ in range(40)))
    per_account = [Counter(outcomes[i * 40:(i + 1) * 40]) for i in range(len(accounts))]
    assert all(c == {"trial": 3, "paid": calls_worth, "credits": 40 - 3 - calls_worth}
               for c in per_account), per_account
    await meter.close()  # leases go back
    for acct in accounts:
        assert await meter.credits(acct) == 0

    sync = sync_redis(cluster.url, cluster=True)
    flusher = Flusher(sync, engine, namespace=ns, consumer="cluster-test")
    assert flusher.drain() >= len(accounts) * 3  # trial events one per entry; leased in groups
    for acct in accounts:
        assert balance(engine, acct) == 0
        assert snapshot(engine, acct).trials == {3: 3}
    checked, drifts, busy = reconcile(sync, engine, flusher, namespace=ns, repair=False)
    assert checked >= len(accounts) and drifts == [] and busy == []
    sync.set(names.credit(accounts[5]), 777)  # one shard drifts: reconcile finds it there
    _, drifts, _ = reconcile(sync, engine, flusher, namespace=ns, repair=True)
    assert [(d.account_id, d.counter, d.redis_value, d.ledger_value, d.repaired)
            for d in drifts] == [(accounts[5], "credits", 777, 0, True)]
    sync.close()
    await client.aclose()


@pytest.mark.parametrize("leases", ["false", "true"], ids=["per-call", "leased"])
def test_one_primary_sigkilled_refuses_its_accounts_uncharged_ledger_matches(
        cluster, tmp_path, leases):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    extra = {"AIMARKET_REDIS_URL": cluster.url, "AIMARKET_REDIS_CLUSTER": "true",
             "AIMARKET_METER_LEASES": leases,
             "AIMARKET_HOLD_TIMEOUT_S": "2", "AIMARKET_FLUSH_CLAIM_IDLE_MS": "300",
             "AIMARKET_REDIS_NAMESPACE": f"f{uuid.uuid4().hex[:6]}:",
             "AIMARKET_SIGNUP_BURST": "1000"}  # four sign-ups from one address
    with running(data, extra_env=extra) as (url, env):
        _scenario(url, env, cluster, data, Keys(extra["AIMARKET_REDIS_NAMESPACE"]))


def _scenario(url: str, env: dict[str, str], cluster: LocalCluster, data: Path,
              names: Keys) -> None:
    c = httpx.Client(base_url=url, timeout=30)

    def login(user: str, pw: str) -> dict[str, str]:
        r = c.post("/v1/auth/token", data={"username": user, "password": pw})
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    admin = login("admin@example.com", "change-me-now")
    buyers: dict[int, str] = {}  # account id -> API key
    for i in range(4):  # account ids in a row: shards in a row, on two primaries or three
        email = f"b{i}@example.com"
        c.post("/v1/accounts", json={"email": email, "password": "buyer-pass-1",
                                     "role": "buyer"})
        me = login(email, "buyer-pass-1")
        key = c.post("/v1/keys", headers=me, json={"rate_limit_rps": 10000,
                                                   "rate_limit_burst": 10000}).json()["key"]
        assert c.post("/v1/admin/credits", headers=admin,
                      json={"account_email": email, "amount": "100.00"}).status_code == 201
        buyers[c.get("/v1/account", headers=me).json()["id"]] = key
    port_of = {a: cluster.port_of(names.credit(a)) for a in buyers}
    victim = Counter(port_of.values()).most_common(1)[0][0]  # the primary of most buyers
    assert len(set(port_of.values())) >= 2, port_of  # some buyers live on other primaries

    results: list[tuple[int, int, str, dict]] = []  # account, status, request id, body
    lock = threading.Lock()
    started, stop = threading.Event(), threading.Event()

    def worker(acct: int, key: str) -> None:
        w = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})
        while not stop.is_set():
            r = w.post("/v2/models/handwritten-digits/infer", json=v2_body())
            with lock:
                results.append((acct, r.status_code, r.headers.get("x-request-id", ""),
                                r.json()))
                if len(results) >= 60:
                    started.set()
            if r.status_code == 503:
                stop.wait(0.01)  # a client backs off a little before it retries

    threads = [threading.Thread(target=worker, args=item) for item in buyers.items()]
    for t in threads:
        t.start()
    assert started.wait(60)
    cluster.kill(victim)  # one primary dies under load
    n_down = len(results)

    def seen(pred) -> bool:  # type: ignore[no-untyped-def]
        with lock:
            return any(pred(a, s) for a, s, _, _ in results[n_down:])

    for _ in range(600):  # its accounts are refused while the others are still served
        if seen(lambda a, s: s == 503 and port_of[a] == victim) and \
                seen(lambda a, s: s == 200 and port_of[a] != victim):
            break
        threading.Event().wait(0.02)
    during = list(results[n_down:])
    assert any(s == 503 for a, s, _, _ in during if port_of[a] == victim)
    assert any(s == 200 for a, s, _, _ in during if port_of[a] != victim)
    cluster.start_node(victim)  # ...and comes back from its append-only file
    cluster.wait_ok()
    n_back = len(results)

    def back() -> bool:
        with lock:
            return any(s == 200 and port_of[a] == victim for a, s, _, _ in results[n_back:])

    for _ in range(1500):  # recovered by itself: the victim's accounts are served again
        if back():
            break
        threading.Event().wait(0.02)
    assert back()
    with lock:
        n_end = len(results) + 100
    for _ in range(1500):  # and some more calls of everyone after that
        if len(results) >= n_end:
            break
        threading.Event().wait(0.02)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)  # every call was answered (none hung)

    failed = [(s, body) for _, s, _, body in results if s != 200]
    assert failed, "the fault never showed"
    assert all(s == 503 and body["error"]["code"] == "metering_unavailable"
               for s, body in failed), failed[:3]
    assert all(port_of[a] == victim for a, s, _, _ in results if s != 200)
    answered = {rid for _, s, rid, _ in results if s == 200}

    # reconcile drains every shard's stream first, sweeps holds past the timeout, compares
    out = subprocess.run([str(BIN), "ledger", "reconcile"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Redis agrees with the ledger" in out.stdout, out.stdout
    engine = create_engine(f"sqlite:///{data / 'aimarket.db'}")
    ids_sql = ",".join(map(str, buyers))  # integers the app gave out
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, account_id, price FROM usage_events "
                                 f"WHERE account_id IN ({ids_sql})")).all()
        balances = dict(conn.execute(text(
            "SELECT account_id, SUM(amount) FROM credit_entries "
            f"WHERE account_id IN ({ids_sql}) GROUP BY account_id")).all())
    engine.dispose()
    ids = [rid for rid, _, _ in rows]
    print(f"\n{len(answered)} answered 200, {len(failed)} refused 503, {len(ids)} ledger "
          f"events; primaries {sorted(set(port_of.values()))}, killed {victim}")
    assert len(ids) == len(set(ids))
    assert set(ids) == answered  # one event per 200, none for the 503s
    paid = Counter(a for _, a, price in rows if price > 0)
    for acct in buyers:
        assert balances[acct] == 100_000_000 - paid[acct] * 2000


async def test_calls_follow_a_slot_moved_to_another_primary(cluster, engine):  # type: ignore[no-untyped-def]
    ns = f"r{uuid.uuid4().hex[:6]}:"
    names = Keys(ns)
    client = async_redis(cluster.url, cluster=True)

    async def load(account_id: int):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(snapshot, engine, account_id)

    meter = Meter(client, fee_bps=2000, load_snapshot=load, namespace=ns, leases=False)
    acct = random.randint(10**6, 10**8) * names.shards + 2
    await meter.add_credits(acct, 100_000, lambda: asyncio.to_thread(
        add_credit, engine, acct, 100_000, reason="grant", reference=f"g:{uuid.uuid4().hex}"))
    for _ in range(10):
        assert await meter.commit(await meter.reserve(_call(acct)), latency_us=3)
    held = [await meter.reserve(_call(acct)) for _ in range(5)]  # in flight across the move
    assert all(r.ok for r in held)
    slot = key_slot(names.credit(acct).encode())
    source = cluster.port_of(names.credit(acct))
    cluster.move_slot(slot, next(p for p in cluster.ports if p != source))
    assert cluster.port_of(names.credit(acct)) != source
    # the client's slot map is stale: the old primary answers MOVED (nothing ran there)
    assert client.get_node_from_key(names.credit(acct)).port == source
    for res in held:
        assert await meter.commit(res, latency_us=3)
    assert client.get_node_from_key(names.credit(acct)).port != source  # followed it
    outcomes = [await meter.reserve(_call(acct)) for _ in range(90)]
    assert sum(r.ok for r in outcomes) == 85  # 100 calls' worth, 15 spent before
    for res in outcomes:
        if res.ok:
            assert await meter.commit(res, latency_us=3)
    assert await meter.credits(acct) == 0
    sync = sync_redis(cluster.url, cluster=True)
    flusher = Flusher(sync, engine, namespace=ns, consumer="moved")
    assert flusher.drain() == 100
    assert balance(engine, acct) == 0
    assert reconcile(sync, engine, flusher, namespace=ns, repair=False)[1] == []
    sync.close()
    await client.aclose()
