"""A heavy model through the paid call, with the local backend's dynamic batching on and off,
against raw onnxruntime at batch 1 and at its best batch, on the same cores, in one run.

The model: PP-OCRv4's text recognizer (rapidocr-onnxruntime's ``ch_PP-OCRv4_rec_infer.onnx``,
10.8 MB, Apache-2.0; a test-extra dependency), a CNN over 3x48x320 text-line images. The bench
appends one ArgMax node over its 6,625 classes (greedy CTC decoding, as rapidocr does next):
the same weights and compute, but 40 indices per image come back instead of a 1 MB score
tensor that would measure JSON encoding rather than serving. Calls send binary v2 tensors
(``Inference-Header-Content-Length``), as tritonclient does.

Starts `aimarket up` (embedded SQLite + Valkey, local backend) in a temp dir; a seller lists the
model, an admin approves it; wrk (Debian package) drives the paid call at 16 connections with
the listing's batching on (the default for a model this slow) and off (`PATCH .../serving
{"batching": "off"}`). Also prints the resident memory each extra session of the model adds
(what ``serving.residency``'s file size x 2 estimates). Usage:

    .venv/bin/python bench/heavy.py [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import helper

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_paid_call", HERE / "paid_call.py")
_paid = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_paid)  # type: ignore[union-attr]
free_port = _paid.free_port
SHAPE = (3, 48, 320)


def recognizer(tmp: Path) -> Path:
    """The published recognizer with an ArgMax over its classes: indices [N, T] int64."""
    spec = find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        sys.exit("needs rapidocr-onnxruntime (pip install -e '.[test]')")
    src = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    model = onnx.load(str(src))
    scores = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [scores], ["indices"], axis=2,
                                             keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(
        "indices", onnx.TensorProto.INT64, ["N", "T"]))
    out = tmp / "rec_argmax.onnx"
    onnx.save(model, str(out))
    print(f"model: {src.name} ({src.stat().st_size / 1e6:.1f} MB) + ArgMax")
    return out


def manifest() -> dict:
    return {
        "title": "PP-OCRv4 text-line recognizer", "category": "vision", "task": "tensor",
        "description": "Text-line recognition (PP-OCRv4, Apache-2.0): class indices per column.",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, *SHAPE]}],
        "outputs": [{"name": "indices", "dtype": "int64", "shape": [-1, -1]}],
        "pricing": {"per_call": "0.001", "trial_calls": 0}, "max_batch": 16,
    }


def binary_body(tmp: Path) -> tuple[Path, int]:
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    path = tmp / "body.bin"
    path.write_bytes(header + x.tobytes())
    return path, len(header)


def wrk(url: str, headers: dict[str, str], body: Path, seconds: int, connections: int,
        tmp: Path) -> dict:
    lua = tmp / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True, text=True, check=True).stdout
    import re

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"ips": rps, "p50": _paid._ms(out, "50%"), "p99": _paid._ms(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def raw_ort(model: Path, batch: int, seconds: float, threads: int) -> float:
    """Images/s of ``threads`` threads running one session (1 intra-op thread, as the local
    backend's) at ``batch`` images a run: the same cores the server gets."""
    from serving.runtime import new_session

    sess = new_session(str(model))
    feed = {"x": np.random.default_rng(1).random((batch, *SHAPE), dtype=np.float32)}
    sess.run(None, feed)
    done = [0] * threads
    end = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            sess.run(None, feed)
            done[i] += batch

    began = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - began)


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def session_memory(model: Path, n: int = 4) -> float:
    """MB of resident memory each extra session adds (after one warm-up run each)."""
    from serving.runtime import new_session

    feed = {"x": np.zeros((1, *SHAPE), np.float32)}
    keep = [new_session(str(model))]
    keep[0].run(None, feed)
    before = rss()
    for _ in range(n):
        keep.append(new_session(str(model)))
        keep[-1].run(None, feed)
    return (rss() - before) / n / 1e6


def serve(tmp: Path, model: Path, args: argparse.Namespace) -> dict[str, dict]:
    port = free_port()
    env = {**os.environ, "AIMARKET_DATA_DIR": str(tmp / "data"), "AIMARKET_SEED_DEMO": "false",
           "AIMARKET_ADMIN_EMAIL": "admin@bench.local", "AIMARKET_ADMIN_PASSWORD": "bench-pass",
           "AIMARKET_SMOKE_CPU_S": "60"}
    log = (tmp / "server.log").open("wb")
    # this checkout's code (the cwd comes first on sys.path with -m), not an installed copy
    proc = subprocess.Popen([sys.executable, "-m", "storefront.cli", "up", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, dict] = {}
    try:
        c = httpx.Client(base_url=base, timeout=300)
        while True:
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)

        def account(email: str, role: str) -> dict[str, str]:
            c.post("/v1/accounts", json={"email": email, "password": "bench-pass", "role": role})
            return login(email)

        def login(email: str) -> dict[str, str]:
            r = c.post("/v1/auth/token", data={"username": email, "password": "bench-pass"})
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        seller = account("seller@example.com", "seller")
        buyer = account("buyer@example.com", "buyer")
        admin = login("admin@bench.local")
        r = c.post("/v1/models", headers=seller, data={
            "attest_rights": "true", "manifest": json.dumps(manifest()), "license": "Apache-2.0",
            "slug": "ppocr-rec"}, files={"model": ("m.onnx", model.read_bytes())})
        assert r.status_code == 201, r.text
        r = c.post("/v1/admin/models/ppocr-rec/approve", headers=admin,
                   json={"version": r.json()["version"], "reason": "bench"})
        assert r.status_code == 200, r.text
        latency = c.get("/v1/models/ppocr-rec").json().get("latency_ms")
        print(f"listed; review-measured latency {latency} ms per batch-1 call")
        key = c.post("/v1/keys", headers=buyer, json={
            "name": "bench", "rate_limit_rps": 10000, "rate_limit_burst": 10000}).json()["key"]
        c.post("/v1/admin/credits", headers=admin,
               json={"account_email": "buyer@example.com", "amount": "100000.00"})
        body, header_len = binary_body(tmp)
        auth = {"Authorization": f"Bearer {key}",
                "Inference-Header-Content-Length": str(header_len)}
        url = f"{base}/v2/models/ppocr-rec/infer"
        r = c.post(url, headers=auth, content=body.read_bytes())
        assert r.status_code == 200, r.text
        for label, patch in (("on (auto)", None), ("off", {"batching": "off"})):
            if patch:
                r = c.patch("/v1/models/ppocr-rec/serving", headers=seller, json=patch)
                assert r.status_code == 200, r.text
            results[f"paid call, batching {label}"] = wrk(
                url, auth, body, args.seconds, args.connections, tmp)
            view = c.get("/v1/models/ppocr-rec/serving", headers=seller).json()
            print(f"batching {label}: the server's counters {view.get('local_batching')}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        log.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="aimarket-heavy-"))
    model = recognizer(tmp)
    threads = os.cpu_count() or 2
    per_session = session_memory(model)
    results = serve(tmp, model, args)
    raw = {b: raw_ort(model, b, min(args.seconds, 5), threads) for b in (1, 2, 4, 8, 16)}
    best = max(raw, key=lambda b: raw[b])
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, binary v2 tensors 1x3x48x320; "
          f"{threads} cores (server and wrk share them)")
    print(f"{'path':40} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:40} {r['ips']:>9.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>8}")
    for b, ips in raw.items():
        print(f"{f'raw onnxruntime, batch {b}, {threads} threads':40} {ips:>9.1f}")
    on, off = results["paid call, batching on (auto)"], results["paid call, batching off"]
    print(f"\npaid (batching on) / raw best (batch {best}): {on['ips'] / raw[best]:.2f}")
    print(f"paid (batching off) / raw best: {off['ips'] / raw[best]:.2f}")
    print(f"paid (batching on) / raw batch 1: {on['ips'] / raw[1]:.2f}")
    print(f"batching on / off: {on['ips'] / off['ips']:.2f}")
    print(f"resident memory per extra session: {per_session:.1f} MB "
          f"(file {model.stat().st_size / 1e6:.1f} MB; the budget estimates 2x the file)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
