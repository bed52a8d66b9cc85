"""Benchmark the paid call against the same server's unmetered path and raw onnxruntime.

Starts `aimarket up` (embedded SQLite + Valkey, local onnxruntime backend) in a temp dir,
drives it with wrk (Debian package `wrk`), and prints req/s, p50, p99 and the ratios, all
measured in this one run on this machine. Usage:

    .venv/bin/python bench/paid_call.py [--seconds 10] [--connections 16] [--model SLUG]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

# bench/ holds serving.py and metering.py: the repository's packages must come first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BIN = Path(sys.executable).parent / "aimarket"
DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4,
         12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10,
         12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
BODY = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, headers: dict[str, str], seconds: int, connections: int, tmp: Path) -> dict:
    lua = tmp / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "requests": total, "p50": _ms(out, "50%"), "p99": _ms(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def cpu_seconds(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds so far of the server process and of its children (the embedded Valkey,
    the flusher): a per-call cost that other load on the machine moves far less than req/s."""
    out = {"server": 0.0, "children": 0.0}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            name = p.name() if p.pid != proc.pid else "server"
        except psutil.Error:
            continue
        out["server" if p.pid == proc.pid else "children"] += t.user + t.system
        if os.environ.get("BENCH_CPU_BY_PROCESS"):
            out[f"{name}:{p.pid}"] = t.user + t.system
    return out


def measured(server: psutil.Process, run: Any) -> dict:
    """``run()``'s wrk figures plus the server's CPU microseconds per answered call."""
    before = cpu_seconds(server)
    r = run()
    after = cpu_seconds(server)
    n = max(1, r["requests"])
    r["cpu_us"] = {k: (after[k] - before[k]) * 1e6 / n for k in after}
    return r


def _ms(out: str, pct: str) -> float:
    m = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)\b", out)
    assert m, out
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def raw_ort(model_path: Path, seconds: float) -> dict:
    from serving.runtime import new_session

    sess = new_session(str(model_path))
    feed = {"X": np.asarray([DIGIT], dtype=np.float32)}
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"rps": len(times) / sum(times), "p50": times[len(times) // 2] * 1000,
            "p99": times[int(len(times) * 0.99)] * 1000, "errors": 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="aimarket-bench-"))
    port = free_port()
    env = dict(os.environ)  # AIMARKET_* settings pass through (e.g. INLINE_INFER_US)
    env.update(AIMARKET_DATA_DIR=str(tmp / "data"), AIMARKET_UNMETERED_ROUTE="true",
               AIMARKET_ADMIN_EMAIL="admin@bench.local", AIMARKET_ADMIN_PASSWORD="bench-pass")
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([str(BIN), "up", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        c = httpx.Client(base_url=base, timeout=30)
        t0 = time.monotonic()
        while True:
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        print(f"aimarket up ready in {time.monotonic() - t0:.1f} s (demo catalog seeded)")
        c.post("/v1/accounts", json={"email": "buyer@example.com", "password": "bench-pass",
                                     "role": "buyer"})

        def login(user: str) -> dict[str, str]:
            r = c.post("/v1/auth/token", data={"username": user, "password": "bench-pass"})
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        key = c.post("/v1/keys", headers=login("buyer@example.com"),
                     json={"rate_limit_rps": 10000, "rate_limit_burst": 10000}).json()["key"]
        c.post("/v1/admin/credits", headers=login("admin@bench.local"),
               json={"account_email": "buyer@example.com", "amount": "100000.00"})
        auth = {"Authorization": f"Bearer {key}"}
        slug = "handwritten-digits"
        for _ in range(10):  # use up the trial: every measured call is a paid call
            c.post(f"/v2/models/{slug}/infer", json=BODY, headers=auth)
        detail = c.get(f"/v1/models/{slug}").json()
        model = tmp / "data" / "models" / detail["versions"][0]["sha256"][:2] / (
            detail["versions"][0]["sha256"] + ".onnx")

        server = psutil.Process(proc.pid)
        results = {
            "paid (auth + Redis reserve/commit)": measured(server, lambda: wrk(
                f"{base}/v2/models/{slug}/infer", auth, args.seconds, args.connections, tmp)),
            "unmetered (same server, no auth/billing)": measured(server, lambda: wrk(
                f"{base}/internal/unmetered/v2/models/{slug}/infer", {}, args.seconds,
                args.connections, tmp)),
            "raw onnxruntime in-process, batch 1": raw_ort(model, min(args.seconds, 5)),
        }
        paid_200 = results["paid (auth + Redis reserve/commit)"]["requests"] + 5
        usage_at = time.monotonic()
        while True:  # the flush is asynchronous: wait until the ledger stops moving
            before = c.get("/v1/usage", headers=login("buyer@example.com")).json()
            if before["total"]["paid_calls"] >= paid_200 or time.monotonic() - usage_at > 10:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        log.close()
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, model {slug}, "
          f"{os.cpu_count()} cores (server and load generator share them)")
    print(f"{'path':45} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
          f"{'CPU us/call: server':>20} {'+ children':>11}")
    for name, r in results.items():
        cpu = r.get("cpu_us")
        tail = f" {cpu['server']:>20.0f} {cpu['children']:>11.0f}" if cpu else ""
        print(f"{name:45} {r['rps']:>10.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['errors']:>8}"
              + tail)
    if os.environ.get("BENCH_CPU_BY_PROCESS"):
        for name, r in results.items():
            if r.get("cpu_us"):
                print(name, {k: round(v) for k, v in r["cpu_us"].items()})
    paid, free, ort = results.values()
    print(f"\npaid / unmetered throughput: {paid['rps'] / free['rps']:.2f}")
    pc, fc = paid["cpu_us"], free["cpu_us"]
    print(f"unmetered / paid CPU per call (server + children): "
          f"{(fc['server'] + fc['children']) / (pc['server'] + pc['children']):.2f}")
    print(f"paid / raw onnxruntime throughput: {paid['rps'] / ort['rps']:.4f}")
    print(f"paid p50 - unmetered p50: {paid['p50'] - free['p50']:.3f} ms")
    print(f"ledger: {before['total']['paid_calls']} paid calls; wrk counted {paid_200} answers "
          f"(incl. 5 warm-up; wrk does not count the <= {args.connections} calls in flight at "
          f"its deadline), spend {before['total']['spend']} USD, "
          f"credits left {before['credits']} (ledger {before['ledger_balance']})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
