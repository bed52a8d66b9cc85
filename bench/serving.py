"""The same model served six ways, side by side, in one run on this machine:

  1. our paid call on the Ray backend (`aimarket up`, AIMARKET_SERVING_BACKEND=ray)
  2. bare Ray Serve, defaults, through its HTTP proxy            (bench/bare_serve.py)
  3. bare Ray Serve, the best settings found (HAProxy front door, throughput-optimized)
  4. our paid call on the local backend (`aimarket up`, the default)
  5. raw onnxruntime in-process (calls/s, no HTTP)
  6. a no-op pure ASGI endpoint (the HTTP limit)
  7. our paid call on the Triton backend (AIMARKET_SERVING_BACKEND=triton, the bundled server)
  8. bare Triton: the same bundled tritonserver and python-backend model, hit directly

Also: approve -> first paid call on Ray, with Ray running. The model is the 20 KB digits MLP
(the demo catalog's). wrk (Debian package, installed here when running as root) drives every
HTTP row with the same body, connections and bounded duration. Usage:

    .venv/bin/python bench/serving.py [--seconds 10] [--rounds 3] [--connections 16] [--only ROWS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file's folder holds metering.py and serving.py: keep it off the import path, where
# they would hide the packages of the same names.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import importlib.util  # noqa: E402

import httpx  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_paid_call", HERE / "paid_call.py")
_paid = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_paid)  # type: ignore[union-attr]
BIN, BODY, free_port, raw_ort, wrk = _paid.BIN, _paid.BODY, _paid.free_port, _paid.raw_ort, \
    _paid.wrk
ROWS = ("ray", "bare-default", "bare-best", "local", "ort", "noop", "triton", "bare-triton")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every live descendant of it."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        grew, tree = bool(more), tree | more
    return sum(used.get(p, 0.0) for p in tree)


def wrk_cpu(url: str, headers: dict[str, str], seconds: int, conns: int, tmp: Path,
            pid: int) -> dict:
    """wrk, plus the server side's CPU microseconds per answered call (the server process and
    its children: tritonserver and its stubs, the embedded Valkey), a figure that other load
    on the machine moves far less than req/s."""
    before = tree_cpu_s(pid)
    result = wrk(url, headers, seconds, conns, tmp)
    result["cpu_us"] = (tree_cpu_s(pid) - before) / max(result["requests"], 1) * 1e6
    return result


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        sys.exit("needs wrk, and installing it needs root: apt-get install -y wrk")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                   stdout=subprocess.DEVNULL)


def wait_ok(url: str, proc: subprocess.Popen, deadline_s: float = 180, method: str = "GET",
            body: dict | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.request(method, url, json=body, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def aimarket(tmp: Path, backend: str
             ) -> Iterator[tuple[str, dict[str, str], httpx.Client, int]]:
    """`aimarket up` with the demo catalog; yields (base URL, buyer key header, admin client,
    the server's pid)."""
    port = free_port()
    data = tmp / f"d-{backend}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMARKET_")}
    env.update(AIMARKET_DATA_DIR=str(data), AIMARKET_SERVING_BACKEND=backend,
               AIMARKET_ADMIN_EMAIL="admin@bench.local", AIMARKET_ADMIN_PASSWORD="bench-pass")
    log = (tmp / f"{backend}.log").open("wb")
    proc = subprocess.Popen([str(BIN), "up", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        wait_ok(f"{base}/healthz", proc)
        print(f"  aimarket up ({backend}) ready in {time.monotonic() - t0:.1f} s", flush=True)
        c = httpx.Client(base_url=base, timeout=60)
        c.post("/v1/accounts", json={"email": "buyer@example.com", "password": "bench-pass",
                                     "role": "buyer"})
        key = c.post("/v1/keys", headers=login(c, "buyer@example.com"),
                     json={"rate_limit_rps": 10000, "rate_limit_burst": 10000}).json()["key"]
        c.post("/v1/admin/credits", headers=login(c, "admin@bench.local"),
               json={"account_email": "buyer@example.com", "amount": "100000.00"})
        auth = {"Authorization": f"Bearer {key}"}
        for _ in range(10):  # use up the trial (and deploy): every measured call is paid
            r = c.post("/v2/models/handwritten-digits/infer", json=BODY, headers=auth)
        assert r.status_code == 200 and r.headers["X-Cost"] != "0.00", r.text
        yield base, auth, c, proc.pid
    finally:
        stop(proc)
        log.close()


def login(c: httpx.Client, user: str) -> dict[str, str]:
    r = c.post("/v1/auth/token", data={"username": user, "password": "bench-pass"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def approve_to_first_call(c: httpx.Client, auth: dict[str, str]) -> float:
    """Seconds from the moderator's approve request to the first answered paid call."""
    from storefront.demo import digits

    model, manifest = digits()
    manifest = {**manifest, "title": "Digits again", "pricing": {"per_call": "0.001",
                                                                "trial_calls": 0}}
    c.post("/v1/accounts", json={"email": "seller@example.com", "password": "bench-pass",
                                 "role": "seller"})
    r = c.post("/v1/models", headers=login(c, "seller@example.com"),
               data={"attest_rights": "true", "license": "MIT",
                     "manifest": json.dumps(manifest)},
               files={"model": ("digits.onnx", model, "application/octet-stream")})
    slug = r.json()["slug"]
    t0 = time.monotonic()
    r = c.post(f"/v1/admin/models/{slug}/approve", headers=login(c, "admin@bench.local"))
    assert r.status_code == 200, r.text
    while c.post(f"/v2/models/{slug}/infer", json=BODY, headers=auth).status_code != 200:
        time.sleep(0.05)
    return time.monotonic() - t0


def bare(tmp: Path, model: Path, mode: str, seconds: int, conns: int) -> dict:
    port = free_port()
    log = (tmp / f"bare-{mode}.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(HERE / "bare_serve.py"), str(model),
                             "--port", str(port), "--mode", mode], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_ok(f"http://127.0.0.1:{port}/", proc, method="POST", body=BODY)
        return wrk_cpu(f"http://127.0.0.1:{port}/", {}, seconds, conns, tmp, proc.pid)
    finally:
        stop(proc)
        log.close()


def bare_triton(tmp: Path, model: Path, seconds: int, conns: int) -> dict:
    """The bundled tritonserver the triton backend starts, with the same python-backend model
    (onnxruntime inside Triton's stub), driven with the same v2 JSON body, no gateway."""
    import hashlib

    from serving import ModelRef
    from serving.triton_repo import triton_name, write_model
    from serving.triton_server import TritonProcess

    server = TritonProcess(tmp / "bare-triton")
    ref = ModelRef(key="digits@1", path=model, sha256=hashlib.sha256(model.read_bytes()
                                                                     ).hexdigest())
    write_model(server.repository, ref, "python")
    server.start()
    try:
        url = f"http://{server.url}/v2/models/{triton_name(ref.key)}"
        httpx.post(f"http://{server.url}/v2/repository/models/{triton_name(ref.key)}/load",
                   timeout=120).raise_for_status()
        httpx.post(f"{url}/infer", json=BODY, timeout=30).raise_for_status()
        assert server.pid is not None
        return wrk_cpu(f"{url}/infer", {}, seconds, conns, tmp, server.pid)
    finally:
        server.stop()


def noop(tmp: Path, seconds: int, conns: int) -> dict:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "noop_asgi:app", "--port", str(port),
         "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"],
        cwd=HERE)
    try:
        wait_ok(f"http://127.0.0.1:{port}/", proc, method="POST", body=BODY)
        return wrk_cpu(f"http://127.0.0.1:{port}/", {}, seconds, conns, tmp, proc.pid)
    finally:
        stop(proc)


def measure(row: str, tmp: Path, model: Path, seconds: int, conns: int,
            first_calls: list[tuple[str, float]]) -> dict:
    """One row, measured once, its servers started and stopped around it."""
    if row in ("ray", "local", "triton"):
        with aimarket(tmp, row) as (base, auth, c, pid):
            if row in ("ray", "triton"):
                first_calls.append((row, approve_to_first_call(c, auth)))
            return wrk_cpu(f"{base}/v2/models/handwritten-digits/infer", auth, seconds, conns,
                           tmp, pid)
    if row == "bare-triton":
        return bare_triton(tmp, model, seconds, conns)
    if row.startswith("bare-"):
        return bare(tmp, model, row.removeprefix("bare-"), seconds, conns)
    if row == "ort":
        return raw_ort(model, min(seconds, 5))
    return noop(tmp, seconds, conns)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated among {ROWS}")
    args = ap.parse_args()
    only = set(args.only.split(","))
    ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="amb-"))
    s, n = args.seconds, args.connections
    names = {
        "ray": "our paid call, Ray backend", "bare-default": "bare Ray Serve, defaults (proxy)",
        "bare-best": "bare Ray Serve, best (HAProxy, tuned)",
        "local": "our paid call, local backend", "ort": "raw onnxruntime in-process",
        "noop": "no-op pure ASGI (HTTP limit)", "triton": "our paid call, Triton backend",
        "bare-triton": "bare Triton (bundled server, same model)",
    }
    runs: dict[str, list[dict]] = {row: [] for row in ROWS if row in only}
    first_calls: list[tuple[str, float]] = []
    from storefront.demo import digits

    model = tmp / "digits.onnx"
    model.write_bytes(digits()[0])
    # Rounds, each measuring every row once: other load on the machine drifts, and a row
    # measured only before or after a drift would carry it into the ratios.
    for round_ in range(args.rounds):
        for row in runs:
            print(f"round {round_ + 1}/{args.rounds}: {names[row]} ...", flush=True)
            runs[row].append(measure(row, tmp, model, s, n, first_calls))

    print(f"\nwrk -t1 -c{n} -d{s}s, the digits model, {os.cpu_count()} cores shared by servers "
          f"and load generator; raw onnxruntime in calls/s; the median of {args.rounds} "
          "round(s) by req/s, every round's req/s in brackets")
    print(f"{'path':42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
          f"{'CPU us/call':>11}  rounds")
    results = {}
    for row, rs in runs.items():
        r = results[row] = sorted(rs, key=lambda x: x["rps"])[len(rs) // 2]
        each = ", ".join(f"{x['rps']:.0f}" for x in rs)
        cpu = f"{r['cpu_us']:.0f}" if "cpu_us" in r else "-"
        print(f"{names[row]:42} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} "
              f"{r['errors']:>8} {cpu:>11}  [{each}]")
    ours = results.get("ray")
    if ours:
        print()
        for row in ("bare-default", "bare-best", "local", "ort", "noop"):
            if row in results:
                per_round = [a["rps"] / b["rps"] for a, b in zip(runs["ray"], runs[row],
                                                                 strict=True)]
                print(f"paid on Ray / {names[row]}: {ours['rps'] / results[row]['rps']:.3f} "
                      f"(per round: {', '.join(f'{x:.2f}' for x in per_round)})")
    if "triton" in results and "bare-triton" in results:
        per_round = [a["rps"] / b["rps"] for a, b in zip(runs["triton"], runs["bare-triton"],
                                                         strict=True)]
        print(f"paid on Triton / bare Triton: "
              f"{results['triton']['rps'] / results['bare-triton']['rps']:.3f} "
              f"(per round: {', '.join(f'{x:.2f}' for x in per_round)})")
        tri, bare_tri = results["triton"], results["bare-triton"]
        print(f"server-side CPU per call, paid on Triton / bare Triton: "
              f"{tri['cpu_us'] / bare_tri['cpu_us']:.2f} ({tri['cpu_us']:.0f} / "
              f"{bare_tri['cpu_us']:.0f} us)")
    if "triton" in results:
        for row in ("local", "ray"):
            if row in results:
                print(f"paid on Triton / {names[row]}: "
                      f"{results['triton']['rps'] / results[row]['rps']:.3f} req/s, "
                      f"{results['triton']['cpu_us'] / results[row]['cpu_us']:.2f} CPU per call")
    for backend in ("ray", "triton"):
        times = [x for row, x in first_calls if row == backend]
        if times:
            print(f"approve -> first paid call on {backend} ({backend} running): "
                  + ", ".join(f"{x:.2f} s" for x in times))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
