"""The gateway -> Triton hop alone: tritonclient's asyncio client vs serving.triton_http.

Starts the bundled tritonserver with the digits model as the triton backend writes it (the
python format), then in this one process (uvloop, as under uvicorn) makes the same batch-1 call
with each client, sequentially and with 16 calls in flight, and prints calls/s, p50 and the
client process's CPU microseconds per call (what the gateway pays for the hop; the server's
own work is not in it). Usage:

    .venv/bin/python bench/triton_hop.py [--calls 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4,
         12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10,
         12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
Call = Callable[[], Awaitable[object]]


async def tritonclient_call(url: str, model: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The call as serving.triton_backend made it before (tritonclient.http.aio)."""
    from tritonclient.http import InferInput, InferRequestedOutput
    from tritonclient.http.aio import InferenceServerClient

    client = InferenceServerClient(url, conn_limit=256)
    x = np.asarray([DIGIT], np.float32)

    async def call() -> object:
        t = InferInput("X", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=True)
        wanted = [InferRequestedOutput(n, binary_data=True) for n in ("label", "probabilities")]
        r = await client.infer(model, [t], outputs=wanted, timeout=60_000_000)
        return r.as_numpy("label"), r.as_numpy("probabilities")

    return call, client.close


async def raw_call(url: str, model: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from serving.triton_http import TritonHTTP

    client = TritonHTTP(url)
    x = np.asarray([DIGIT], np.float32)

    async def call() -> object:
        return await client.infer(model, {"X": x}, ["label", "probabilities"])

    return call, client.close


async def measure(call: Call, calls: int, inflight: int) -> dict[str, float]:
    for _ in range(50):
        await call()
    lat: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(calls // inflight) for _ in range(inflight)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    lat.sort()
    return {"rps": len(lat) / wall, "p50": lat[len(lat) // 2] * 1000,
            "cpu_us": cpu / len(lat) * 1e6}


async def run(url: str, model: str, calls: int, rounds: int) -> None:
    rows: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for name, make in (("tritonclient.http.aio", tritonclient_call),
                           ("serving.triton_http", raw_call)):
            call, close = await make(url, model)
            for inflight in (1, 16):
                rows.setdefault(f"{name}, {inflight} in flight", []).append(
                    await measure(call, calls, inflight))
            await close()
    print(f"\n{'client':42} {'calls/s':>9} {'p50 ms':>8} {'client CPU us/call':>20}  rounds")
    for name, rs in rows.items():
        best = min(rs, key=lambda r: r["cpu_us"])
        each = ", ".join(f"{r['cpu_us']:.0f}" for r in rs)
        print(f"{name:42} {best['rps']:>9.0f} {best['p50']:>8.3f} {best['cpu_us']:>20.0f}  "
              f"[{each}]")
    for inflight in (1, 16):
        a = min(r["cpu_us"] for r in rows[f"tritonclient.http.aio, {inflight} in flight"])
        b = min(r["cpu_us"] for r in rows[f"serving.triton_http, {inflight} in flight"])
        print(f"client CPU per call, {inflight} in flight: tritonclient / raw = {a / b:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import uvloop

    from serving import ModelRef
    from serving.triton_repo import triton_name, write_model
    from serving.triton_server import TritonProcess
    from storefront.demo import digits

    tmp = Path(tempfile.mkdtemp(prefix="amb-hop-"))
    model = tmp / "digits.onnx"
    model.write_bytes(digits()[0])
    ref = ModelRef(key="digits@1", path=model, sha256=hashlib.sha256(model.read_bytes()
                                                                     ).hexdigest())
    server = TritonProcess(tmp / "triton")
    write_model(server.repository, ref, "python")
    server.start()
    try:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(
            f"http://{server.url}/v2/repository/models/{triton_name(ref.key)}/load",
            data=b"{}", method="POST"), timeout=120).read()
        uvloop.run(run(server.url, triton_name(ref.key), args.calls, args.rounds))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
