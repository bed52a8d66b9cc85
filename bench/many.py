"""Many listings of a real CNN, few of them hot: resident memory of the marketplace, p50/p99 of
hot calls and of cold first calls, with AIMARKET_MODEL_MEMORY_MB bounding the loaded sessions.

The model is bench/heavy.py's (PP-OCRv4's 10.9 MB text recognizer + ArgMax). One listing is
uploaded, reviewed and approved over HTTP; the bench then copies its rows into N listings in
the database (the same reviewed model file, each listing its own onnxruntime session), and
restarts the server with the budget. Hot: wrk -c16 over the hot listings' paid calls (binary
v2 tensors). Cold: one first paid call to each of some listings nobody called (each waits for
its model's load). Usage:

    .venv/bin/python bench/many.py [--listings 200] [--hot 10] [--budget-mb 400] [--cold 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_heavy", HERE / "heavy.py")
heavy = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(heavy)  # type: ignore[union-attr]


@contextmanager
def server(data: Path, log: Path, **env: str) -> Iterator[tuple[httpx.Client, int]]:
    port = heavy.free_port()
    full = {**os.environ, "AIMARKET_DATA_DIR": str(data), "AIMARKET_SEED_DEMO": "false",
            "AIMARKET_ADMIN_EMAIL": "admin@bench.local", "AIMARKET_ADMIN_PASSWORD": "bench-pass",
            "AIMARKET_SMOKE_CPU_S": "60", **env}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storefront.cli", "up", "--port", str(port)], env=full,
            stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent)
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    try:
        while True:
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield c, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def rss_mb(pid: int) -> float:
    """Resident memory of the server process and its children (the flusher) in MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def settle(pid: int, quiet_s: float = 3.0, deadline_s: float = 600) -> float:
    """Wait until the server's memory stops growing (the preload is done); its RSS."""
    end, last, still = time.monotonic() + deadline_s, 0.0, 0.0
    while time.monotonic() < end:
        now = rss_mb(pid)
        still = still + 0.5 if abs(now - last) < 2 else 0.0
        if still >= quiet_s:
            return now
        last = now
        time.sleep(0.5)
    return rss_mb(pid)


def login(c: httpx.Client, email: str) -> dict[str, str]:
    r = c.post("/v1/auth/token", data={"username": email, "password": "bench-pass"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def list_one(c: httpx.Client, model: Path) -> str:
    """Seller, buyer (API key, credits) and one approved listing; returns the key."""
    for email, role in (("seller@example.com", "seller"), ("buyer@example.com", "buyer")):
        c.post("/v1/accounts", json={"email": email, "password": "bench-pass", "role": role})
    admin = login(c, "admin@bench.local")
    r = c.post("/v1/models", headers=login(c, "seller@example.com"), data={
        "attest_rights": "true", "manifest": json.dumps(heavy.manifest()),
        "license": "Apache-2.0", "slug": "many-0"}, files={"model": ("m.onnx", model.read_bytes())})
    assert r.status_code == 201, r.text
    r = c.post("/v1/admin/models/many-0/approve", headers=admin,
               json={"version": r.json()["version"], "reason": "bench"})
    assert r.status_code == 200, r.text
    c.post("/v1/admin/credits", headers=admin,
           json={"account_email": "buyer@example.com", "amount": "100000.00"})
    key = c.post("/v1/keys", headers=login(c, "buyer@example.com"), json={
        "name": "bench", "rate_limit_rps": 10000, "rate_limit_burst": 10000}).json()["key"]
    return str(key)


def clone(data: Path, n: int) -> None:
    """Listings many-1 .. many-(n-1): copies of many-0's reviewed rows (same model file)."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from storefront.models import Listing, ListingVersion

    engine = create_engine(f"sqlite:///{data / 'aimarket.db'}")
    with Session(engine) as db:
        listing = db.execute(select(Listing).where(Listing.slug == "many-0")).scalar_one()
        lv = db.execute(select(ListingVersion).where(
            ListingVersion.listing_id == listing.id)).scalar_one()
        skip = {"id", "listing_id", "slug"}
        lcols = {c.key: getattr(listing, c.key) for c in Listing.__table__.columns
                 if c.key not in skip}
        vcols = {c.key: getattr(lv, c.key) for c in ListingVersion.__table__.columns
                 if c.key not in skip}
        for i in range(1, n):
            copy = Listing(slug=f"many-{i}", **lcols)
            db.add(copy)
            db.flush()
            db.add(ListingVersion(listing_id=copy.id, **vcols))
        db.commit()
    engine.dispose()


def wrk_hot(base: str, key: str, slugs: list[str], body: Path, header_len: int,
            seconds: int, tmp: Path) -> dict:
    lua = tmp / "hot.lua"
    paths = ", ".join(f'"/v2/models/{s}/infer"' for s in slugs)
    lua.write_text(
        f'local f = io.open("{body}", "rb")\nlocal body = f:read("*all")\nf:close()\n'
        f"local paths = {{{paths}}}\n"
        'local headers = {["Content-Type"] = "application/octet-stream", '
        f'["Authorization"] = "Bearer {key}", '
        f'["Inference-Header-Content-Length"] = "{header_len}"}}\n'
        "request = function()\n"
        '  return wrk.format("POST", paths[math.random(#paths)], headers, body)\nend\n')
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s", str(lua),
                          base], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50": heavy._paid._ms(out, "50%"), "p99": heavy._paid._ms(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listings", type=int, default=200)
    ap.add_argument("--hot", type=int, default=10)
    ap.add_argument("--cold", type=int, default=30)
    ap.add_argument("--budget-mb", type=int, default=400)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aimarket-many-"))
    data, log = tmp / "data", tmp / "server.log"
    model = heavy.recognizer(tmp)
    with server(data, log) as (c, _):
        key = list_one(c, model)
    clone(data, args.listings)
    body, header_len = heavy.binary_body(tmp)
    hot = [f"many-{i}" for i in range(args.hot)]
    cold = [f"many-{i}" for i in range(args.hot, args.hot + args.cold)]
    began = time.monotonic()
    with server(data, log, AIMARKET_MODEL_MEMORY_MB=str(args.budget_mb)) as (c, pid):
        ready = time.monotonic() - began
        at_start = settle(pid)
        auth = {"Authorization": f"Bearer {key}",
                "Inference-Header-Content-Length": str(header_len)}
        for slug in hot:  # warm the hot set (their first calls load them)
            r = c.post(f"/v2/models/{slug}/infer", headers=auth, content=body.read_bytes())
            assert r.status_code == 200, r.text
        hot_run = wrk_hot(str(c.base_url), key, hot, body, header_len, args.seconds, tmp)
        after_hot = rss_mb(pid)
        firsts = []
        for slug in cold:
            t0 = time.perf_counter()
            r = c.post(f"/v2/models/{slug}/infer", headers=auth, content=body.read_bytes())
            firsts.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
        after_cold = rss_mb(pid)
        page = c.get(f"/models/{cold[0]}").text
        shown = re.search(r'class="cold-start">([^<]+)<', page)
    firsts.sort()
    size = model.stat().st_size / 1e6
    print(f"\n{args.listings} listings of the {size:.1f} MB recognizer, {args.hot} hot, "
          f"AIMARKET_MODEL_MEMORY_MB={args.budget_mb} (~{args.budget_mb / (2 * size):.0f} "
          f"sessions at file size x 2); {os.cpu_count()} cores shared with wrk")
    print(f"server ready in {ready:.1f} s; resident memory (server + flusher): after the "
          f"preload {at_start:.0f} MB, after the hot run {after_hot:.0f} MB, after "
          f"{args.cold} cold first calls {after_cold:.0f} MB")
    print(f"hot calls (wrk -c16 over {args.hot} listings, {args.seconds} s): "
          f"{hot_run['rps']:.1f} req/s, p50 {hot_run['p50']:.1f} ms, p99 {hot_run['p99']:.1f} ms, "
          f"non-2xx {hot_run['errors']}")
    p99 = firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))]
    print(f"cold first calls ({len(firsts)}, one at a time): p50 {statistics.median(firsts):.0f} "
          f"ms, p99 {p99:.0f} ms, max {firsts[-1]:.0f} ms")
    print(f"model page of a cold listing shows: {shown.group(1) if shown else '(nothing)'}")
    print(f"every listing loaded would take ~{args.listings * 18:.0f} MB more "
          "(18 MB a session, bench/heavy.py)")


if __name__ == "__main__":
    main()
