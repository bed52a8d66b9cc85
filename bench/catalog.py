"""Benchmark the catalog and the model page with a big marketplace: seeds live listings and
usage events straight into the database (set-based SQL, seconds not hours), starts the real app
on uvicorn in its own process, and prints p50 / p95 of catalog searches (text, category, task,
sorts, deep pages), the model page's JSON and HTML, and the catalog page, over HTTP.

    .venv/bin/python bench/catalog.py                      # SQLite, 10,000 listings, 10M events
    .venv/bin/python bench/catalog.py --postgres           # the PostgreSQL at 127.0.0.1:5432
    .venv/bin/python bench/catalog.py --listings 2000 --events 1000000 --requests 100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storefront.db import make_engine, migrate  # noqa: E402

CATEGORIES = ["vision", "audio", "text", "tabular", "medical", "retail", "finance", "robotics",
              "agriculture", "security", "science", "sports"]
TASKS = ["image-classification", "object-detection", "text-classification", "tabular-regression",
         "tensor", "audio-classification"]
WORDS = ["resnet", "mobile", "tiny", "fast", "detector", "digits", "faces", "crops", "fraud",
         "churn", "sentiment", "keyword", "spectrum", "defect", "vehicle", "species", "quality",
         "forecast", "anomaly", "pose"]
MANIFEST = json.dumps({
    "title": "Bench model", "description": "A seeded listing", "category": "vision",
    "task": "tensor", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 64]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 10]}],
    "pricing": {"per_call": "0.002", "trial_calls": 3},
})
DAY_MS = 86_400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listing_rows(n: int, sellers: int, now_ms: int) -> list[tuple[Any, ...]]:
    rng = random.Random(15)
    rows = []
    for i in range(1, n + 1):
        words = rng.sample(WORDS, 3)
        title = f"{words[0].title()} {words[1]} {i}"
        desc = (f"A {words[0]} {words[1]} model for {words[2]} work. " * 4).strip()
        rows.append((i, f"bench-{words[0]}-{words[1]}-{i}", 1 + i % sellers, title, desc,
                     CATEGORIES[i % len(CATEGORIES)], TASKS[i % len(TASKS)],
                     now_ms - rng.randrange(365 * DAY_MS)))
    return rows


def seed_sqlite(url: str, listings: int, events: int) -> None:
    engine = make_engine(url)
    migrate(engine)
    raw: Any = engine.raw_connection()
    cur = raw.cursor()
    now_ms = int(time.time() * 1000)
    ts = ("strftime('%Y-%m-%d %H:%M:%S', {0} / 1000, 'unixepoch') "
          "|| printf('.%03d000', {0} % 1000)")
    sellers = max(1, listings // 20)
    cur.executemany("INSERT INTO accounts (id, email, name, password_hash, role, created_at, "
                    "session_epoch) VALUES (?, ?, ?, 'x', 'seller', '2026-01-01 00:00:00', 0)",
                    [(i, f"seller{i}@bench.example.com", f"Seller {i}")
                     for i in range(1, sellers + 1)])
    cur.executemany(
        "INSERT INTO listings (id, slug, seller_id, title, description, category, task, status, "
        f"created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'listed', {ts.format('?')})",
        [(*r[:7], r[7], r[7]) for r in _listing_rows(listings, sellers, now_ms)])
    # Every listing has a live version 1; every third also a live version 2.
    cur.execute(
        "INSERT INTO listing_versions (listing_id, version, model_sha256, size_bytes, "
        "manifest_json, price, trial_calls, export_price, opset, latency_us, status, "
        "review_reason, created_at, reviewed_at, fingerprint, sketch, findings, license) "
        "SELECT l.id, v.version, printf('%064d', l.id), 20000, ?, 1000 + (l.id * 37) % 9000, 3, "
        "NULL, 17, 50 + (l.id * 53) % 5000, 'live', '', l.created_at, l.created_at, '', '{}', "
        "'[]', 'MIT' FROM listings l JOIN (SELECT 1 AS version UNION ALL SELECT 2) v "
        "ON v.version = 1 OR l.id % 3 = 0", (MANIFEST,))
    # Events: listing ids skewed (a few listings serve most calls), spread over 90 days.
    cur.execute(
        "INSERT INTO usage_events (id, account_id, api_key_id, listing_id, listing_version_id, "
        "seller_id, kind, price, seller_share, platform_fee, latency_us, created_at, flushed_at) "
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?), "
        "e(i, lid, t) AS (SELECT i, 1 + ((i % 997) * (i % 1009) * 7919) % ? "
        "  * ((i % 13) + 1) / 13, ? - (i * 7777) % (90 * 86400000) FROM c) "
        "SELECT printf('seed%012d', i), 1 + i % 20000, 1 + i % 20000, 1 + lid % ?, 1, "
        "1 + lid % ?, CASE i % 10 WHEN 0 THEN 'trial' WHEN 1 THEN 'demo' ELSE 'paid' END, "
        "CASE WHEN i % 10 > 1 THEN 2000 ELSE 0 END, CASE WHEN i % 10 > 1 THEN 1600 ELSE 0 END, "
        f"CASE WHEN i % 10 > 1 THEN 400 ELSE 0 END, 40, {ts.format('t')}, {ts.format('t')} "
        "FROM e", (events, listings, now_ms, listings, sellers))
    _count(cur)
    raw.commit()
    raw.close()
    engine.dispose()


def seed_postgres(url: str, listings: int, events: int) -> None:
    engine = make_engine(url)
    migrate(engine)
    raw: Any = engine.raw_connection()
    cur = raw.cursor()
    now_ms = int(time.time() * 1000)
    sellers = max(1, listings // 20)
    with cur.copy("COPY accounts (id, email, name, password_hash, role, created_at, "
                  "session_epoch) FROM STDIN") as copy:
        for i in range(1, sellers + 1):
            copy.write_row((i, f"seller{i}@bench.example.com", f"Seller {i}", "x", "seller",
                            "2026-01-01 00:00:00+00", 0))
    with cur.copy("COPY listings (id, slug, seller_id, title, description, category, task, "
                  "status, created_at) FROM STDIN") as copy:
        for r in _listing_rows(listings, sellers, now_ms):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(r[7] / 1000))
            copy.write_row((*r[:7], "listed", stamp))
    cur.execute(
        "INSERT INTO listing_versions (listing_id, version, model_sha256, size_bytes, "
        "manifest_json, price, trial_calls, export_price, opset, latency_us, status, "
        "review_reason, created_at, reviewed_at, fingerprint, sketch, findings, license) "
        "SELECT l.id, v.version, lpad(l.id::text, 64, '0'), 20000, %s, 1000 + (l.id * 37) % 9000,"
        " 3, NULL, 17, 50 + (l.id * 53) % 5000, 'live', '', l.created_at, l.created_at, '', '{}',"
        " '[]', 'MIT' FROM listings l JOIN (VALUES (1), (2)) v(version) "
        "ON v.version = 1 OR l.id % 3 = 0", (MANIFEST,))
    for fix in ("accounts", "listings", "listing_versions"):  # serial sequences past the seed
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{fix}', 'id'), "
                    f"(SELECT max(id) FROM {fix}))")
    cur.execute(
        "INSERT INTO usage_events (id, account_id, api_key_id, listing_id, listing_version_id, "
        "seller_id, kind, price, seller_share, platform_fee, latency_us, created_at, flushed_at) "
        "SELECT 'seed' || lpad(i::text, 12, '0'), 1 + i % 20000, 1 + i % 20000, 1 + lid % %s, 1,"
        " 1 + lid % %s, CASE i % 10 WHEN 0 THEN 'trial' WHEN 1 THEN 'demo' ELSE 'paid' END, "
        "CASE WHEN i % 10 > 1 THEN 2000 ELSE 0 END, CASE WHEN i % 10 > 1 THEN 1600 ELSE 0 END, "
        "CASE WHEN i % 10 > 1 THEN 400 ELSE 0 END, 40, t, t FROM ("
        "  SELECT i, (1 + ((i % 997) * (i % 1009) * 7919) % %s * ((i % 13) + 1) / 13) AS lid, "
        "  to_timestamp((%s - (i * 7777) % (90::bigint * 86400000)) / 1000.0) AS t "
        "  FROM generate_series(1, %s::bigint) i) e",
        (listings, sellers, listings, now_ms, events))
    _count(cur)
    cur.execute("ANALYZE")
    raw.commit()
    raw.close()
    engine.dispose()


def _count(cur: Any) -> None:
    """The counters the flusher would have kept for these events (the migration's backfill)."""
    cur.execute("DELETE FROM listing_counters")
    cur.execute("INSERT INTO listing_counters (listing_id, calls_served) SELECT listing_id, "
                "count(*) FROM usage_events WHERE kind IN ('trial', 'paid', 'demo') "
                "GROUP BY listing_id")
    cur.execute("INSERT INTO listing_counters (listing_id, calls_served) SELECT id, 0 FROM "
                "listings WHERE id NOT IN (SELECT listing_id FROM listing_counters)")


def start_app(data: Path, db_url: str, redis_url: str | None
              ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "AIMARKET_DATA_DIR": str(data), "AIMARKET_DATABASE_URL": db_url,
           "AIMARKET_SEED_DEMO": "false", "GRADIO_ANALYTICS_ENABLED": "False",
           "AIMARKET_FLUSHER_PROCESS": "false"}
    if redis_url:
        env["AIMARKET_REDIS_URL"] = redis_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "storefront.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env=env, cwd=Path(__file__).resolve().parents[1])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the app exited during start")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the app did not start")


def measure(http: httpx.Client, paths: list[str], requests: int) -> tuple[float, float, Any]:
    for p in paths[:5]:  # warm the caches and the connection
        http.get(p)
    times = []
    last: Any = None
    for i in range(requests):
        path = paths[i % len(paths)]
        t0 = time.perf_counter()
        r = http.get(path)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        last = r
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.95)] * 1000, last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listings", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=200, help="per row")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--redis", default=None, help="Redis URL (default: the embedded one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aimarket-bench-catalog-"))
    pg_name = None
    if args.postgres:
        import psycopg

        pg_name = f"aimarket_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{pg_name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    t0 = time.perf_counter()
    (seed_postgres if args.postgres else seed_sqlite)(url, args.listings, args.events)
    seeded = time.perf_counter() - t0
    print(f"seeded {args.listings:,} live listings and {args.events:,} usage events into "
          f"{'PostgreSQL' if args.postgres else 'SQLite'} in {seeded:.0f} s")
    proc, base = start_app(tmp / "data", url, args.redis)
    rng = random.Random(1)
    slugs = [r[1] for r in _listing_rows(args.listings, max(1, args.listings // 20), 0)]
    picks = [slugs[rng.randrange(len(slugs))] for _ in range(50)]
    last_page = max(1, args.listings // 20)
    rows = [
        ("catalog, newest, page 1", ["/v1/models"]),
        ("catalog, most used (calls_served)", ["/v1/models?sort=popular"]),
        ("catalog, text search", [f"/v1/models?q={w}" for w in WORDS[:10]]),
        ("catalog, text search + most used", [f"/v1/models?q={w}&sort=popular"
                                              for w in WORDS[10:]]),
        ("catalog, category + price", [f"/v1/models?category={c}&sort=price"
                                       for c in CATEGORIES]),
        ("catalog, task + latency, page 3", [f"/v1/models?task={t}&sort=latency&page=3"
                                             for t in TASKS]),
        ("catalog, title, deep page", [f"/v1/models?sort=title&page={last_page - k}"
                                       for k in range(5)]),
        ("model page, API JSON", [f"/v1/models/{s}" for s in picks]),
        ("model page, HTML", [f"/models/{s}" for s in picks]),
        ("catalog page, HTML, most used", ["/", "/?sort=popular&page_no=2"]),
        ("catalog page, HTML, search + category", [f"/?q={w}&category={c}" for w, c in
                                                   zip(WORDS, CATEGORIES, strict=False)]),
    ]
    try:
        print(f"{'request':42} {'p50 ms':>8} {'p95 ms':>8}   ({args.requests} sequential "
              "requests each, one keep-alive connection)")
        with httpx.Client(base_url=base, timeout=30) as http:
            worst = 0.0
            for name, paths in rows:
                p50, p95, last = measure(http, paths, args.requests)
                worst = max(worst, p95)
                print(f"{name:42} {p50:8.2f} {p95:8.2f}")
            body = http.get("/v1/models?sort=popular&page_size=3").json()
            print("most used:", ", ".join(f"{i['slug']} ({i['calls_served']:,} calls)"
                                          for i in body["items"]))
            print(f"worst p95 {worst:.2f} ms (target 20 ms)")
    finally:
        proc.terminate()
        proc.wait(30)
        if pg_name:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                                 autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
