"""A real 2-node Ray cluster on this machine (``ray start --head`` and ``ray start --address``
with its own resources and temp dir) with two gateway processes (``aimarket up``) on the real
PostgreSQL + Redis: live listings deployed at start, one listing's replicas spread over both
nodes at nice 0, paid calls through both gateways counted once, the second node stopped
mid-traffic (503s not charged, no call waits long, the replicas come back on the head node),
and ``aimarket ledger reconcile`` finds no drift.

The gateways have their own data dirs: the second one never saw the models' files (its
replicas read them from Ray's object store). Every process the test starts is stopped by its
id at the end (never ``ray stop``: that stops every Ray on the host).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HAVE_PG, HAVE_REDIS, SYSTEM_REDIS
from tests.helpers import v2_body
from tests.integration.gateways import cli, gateway, gateway_env
from tests.integration.journey import approve, buyer, free_port, login, publish, signup, until

pytestmark = [pytest.mark.integration, pytest.mark.ray]
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
if not (HAVE_PG and HAVE_REDIS):
    pytest.skip("needs PostgreSQL and Redis at 127.0.0.1", allow_module_level=True)

PRICE = Decimal("0.001")
# Four threads call until Ray has replaced the lost replica (tens of seconds on a loaded box,
# ~130 calls/s): enough credit that they never run out of it (402) first.
CREDITS = Decimal("100.00")
# The head's GCS declares a silent node dead within ~2 s (default: ~30 s).
FAST_NODE_DEATH = {"RAY_health_check_initial_delay_ms": "1000",
                   "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                   "RAY_health_check_failure_threshold": "3"}


@dataclass
class Cluster:
    address: str
    temp: str
    raylets: dict[str, Any] = field(default_factory=dict)  # "head" / "node2" -> Process


def _ports(*names: str) -> list[str]:
    args: list[str] = []
    for name in names:
        args += [f"--{name}", str(free_port())]
    return args


def _start_node(cluster: Cluster, name: str, args: list[str], env: dict[str, str]) -> None:
    manager = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run(
        [ray_cli, "start", *args, "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
         "--node-manager-port", str(manager), "--temp-dir", cluster.temp,
         "--object-store-memory", str(150 * 2**20), "--disable-usage-stats",
         *_ports("object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [raylet] = [p for p in psutil.process_iter(["cmdline"])
                if f"--node_manager_port={manager}" in (p.info["cmdline"] or [])]
    cluster.raylets[name] = raylet


def _stop(temp: str) -> None:
    """SIGKILL every process of this cluster (those naming its temp dir, and theirs)."""
    procs: set[Any] = set()
    for p in psutil.process_iter(["cmdline"]):
        if any(temp in part for part in p.info["cmdline"] or []):
            procs.add(p)
            with contextlib.suppress(psutil.Error):
                procs.update(p.children(recursive=True))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(procs), timeout=20)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # short: Ray's socket paths under it must stay below 108 bytes
    c = Cluster(address="", temp=tempfile.mkdtemp(prefix="amrc-", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           **FAST_NODE_DEATH}
    # replicas run at Ray's default nice 15 here: the app did not start this cluster
    env.pop("RAY_worker_niceness", None)
    port = free_port()
    c.address = f"127.0.0.1:{port}"
    try:
        _start_node(c, "head", ["--head", "--port", str(port), "--include-dashboard=false",
                                "--min-worker-port", "20000", "--max-worker-port", "20099",
                                *_ports("dashboard-port", "ray-client-server-port")], env)
        _start_node(c, "node2", ["--address", c.address, "--resources", '{"node2": 1}',
                                 "--min-worker-port", "20100", "--max-worker-port", "20199"],
                    env)
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        _stop(c.temp)
        subprocess.run(["rm", "-rf", c.temp], check=False)


@pytest.fixture(scope="module")
def gateways(cluster: Cluster, pg_database: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, Any]]:
    """Gateway A started; B is started by the first test (after the cluster lost its apps)."""
    root = tmp_path_factory.mktemp("cluster")
    common = {"serving_backend": "ray", "ray_address": cluster.address,
              "database_url": pg_database, "redis_url": SYSTEM_REDIS,
              "redis_namespace": f"rc{secrets.token_hex(4)}:", "flusher_process": False,
              "secret_key": secrets.token_urlsafe(48),  # one key: tokens and the wire secret
              "rate_limit_rps": 10_000, "rate_limit_burst": 10_000}  # traffic, not a limit test
    envs = {name: gateway_env(root / name, **common) for name in ("a", "b")}
    with contextlib.ExitStack() as stack:
        state: dict[str, Any] = {"envs": envs, "root": root, "stack": stack}
        state["a"] = stack.enter_context(gateway(envs["a"], log=root / "a.log"))
        yield state
        stack.close()  # the gateways go before the cluster does
    import redis

    r = redis.Redis.from_url(SYSTEM_REDIS)
    for k in r.scan_iter(f"{common['redis_namespace']}*"):
        r.delete(k)


def _replicas(cluster: Cluster, app: str) -> dict[int, str]:
    """pid -> node ("head" / "node2") of each live replica process of ``app``."""
    nodes = {r.pid: name for name, r in cluster.raylets.items() if r.is_running()}
    out = {}
    for p in psutil.process_iter(["cmdline", "ppid"]):
        if any(f"ServeReplica:{app}:" in part for part in p.info["cmdline"] or []) \
                and p.info["ppid"] in nodes:
            out[p.pid] = nodes[p.info["ppid"]]
    return out


def _call(url: str, slug: str, key: dict[str, str], http: httpx.Client | None = None
          ) -> tuple[int, str, float]:
    """(status, error code, seconds) of one paid call."""
    started = time.monotonic()
    r = (http or httpx).post(f"{url}/v2/models/{slug}/infer", headers=key, json=v2_body(),
                             timeout=60)
    code = r.json().get("error", {}).get("code", "") if r.status_code != 200 else ""
    return r.status_code, code, time.monotonic() - started


def test_live_listings_deploy_at_start_spread_over_both_nodes_and_both_gateways_answer(
        cluster: Cluster, gateways: dict[str, Any]) -> None:
    from ray import serve

    url_a = gateways["a"]
    with httpx.Client(base_url=url_a, timeout=120) as http:
        from storefront.demo import digits

        model, manifest = digits()
        manifest["pricing"] = {"per_call": str(PRICE), "trial_calls": 0}
        _, seller = signup(http, "seller")
        slug = publish(http, seller, model, manifest, slug="cluster-digits")["slug"]
        approve(http, slug, 1)
        r = http.patch(f"/v1/models/{slug}/serving", headers=seller,
                       json={"min_replicas": 2, "max_replicas": 2})
        assert r.status_code == 200, r.text
        key, addr = buyer(http, credits=str(CREDITS))
    app = f"{slug}-v1"
    until(lambda: len(_replicas(cluster, app)) == 2, 60, "two replicas")

    # The cluster loses its applications (a fresh cluster, a RayService upgrade): a gateway
    # that starts deploys every live listing before it answers, not on the listing's first call.
    serve.delete(app)
    until(lambda: not _replicas(cluster, app), 60, "the application to go")
    stack = gateways["stack"]
    url_b = stack.enter_context(gateway(gateways["envs"]["b"], log=gateways["root"] / "b.log"))
    placed = _replicas(cluster, app)
    assert sorted(placed.values()) == ["head", "node2"]  # spread: one replica on each node
    assert {psutil.Process(pid).nice() for pid in placed} == {0}  # not Ray's nice 15

    for url in (url_b, url_a, url_b, url_a):  # gateway A adopts B's new replicas
        until(lambda u=url: _call(u, slug, key)[0] == 200, 30, f"a paid call via {url}")
    with httpx.Client() as c:
        results = [_call(url, slug, key, c) for _ in range(10) for url in (url_a, url_b)]
    assert [s for s, _, _ in results] == [200] * 20
    gateways.update(b=url_b, slug=slug, app=app, key=key, buyer=addr)


def test_losing_a_node_mid_traffic_charges_nothing_it_did_not_answer(
        cluster: Cluster, gateways: dict[str, Any]) -> None:
    slug, app, key = gateways["slug"], gateways["app"], gateways["key"]
    urls = (gateways["a"], gateways["b"])
    results: list[tuple[int, str, float]] = []
    stop = threading.Event()

    def traffic(i: int) -> None:
        with httpx.Client() as c:
            while not stop.is_set():
                results.append(_call(urls[i % 2], slug, key, c))
                i += 1

    threads = [threading.Thread(target=traffic, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        until(lambda: len(results) >= 40, 60, "traffic before the node goes")
        before = len(results)
        node2 = cluster.raylets["node2"]
        victims = [node2, *node2.children(recursive=True)]
        for p in victims:  # the node is gone at once: raylet, agents, its replica
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=20)
        # Serve replaces the lost replica on the head node; calls succeed again.
        until(lambda: sorted(_replicas(cluster, app).values()) == ["head", "head"], 90,
              "the lost replica to come back on the remaining node")
        mark = len(results)
        until(lambda: len(results) >= mark + 40, 60, "traffic after the replacement")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert [s for s, _, _ in results[:before]] == [200] * before
    seen = collections.Counter((s, c) for s, c, _ in results)
    assert set(seen) <= {(200, ""), (503, "replica_unavailable")}, (seen, len(results))
    assert [s for s, _, _ in results[-20:]] == [200] * 20
    assert max(t for _, _, t in results) < 5.0, "no call waits more than a few seconds"

    answered = sum(1 for s, _, _ in results if s == 200) + 4 + 20  # + the first test's
    with httpx.Client(base_url=urls[0], timeout=60) as http:
        session = login(http, gateways["buyer"])

        def ledger() -> dict[str, Any] | None:
            usage = http.get("/v1/usage", headers=session).json()
            return usage if usage["total"]["paid_calls"] >= answered else None

        usage = until(ledger, 60, "the flushers to write every answered call")
    assert usage["total"]["paid_calls"] == answered  # once each; the 503s not at all
    assert Decimal(usage["credits"]) == CREDITS - answered * PRICE
    assert Decimal(usage["ledger_balance"]) == Decimal(usage["credits"])

    done = cli("ledger", "reconcile", env=gateways["envs"]["a"])
    assert done.exit_code == 0, done.output
    assert "Redis agrees with the ledger" in done.output, done.output
