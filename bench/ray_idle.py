"""Scale to zero on the Ray backend, measured in one run on this machine.

A fixed-size listing (the 20 KB digits MLP, one replica) is deployed on a local Ray through
``serving.ray_backend.RayBackend``, called warm (the wire path), parked (scaled to zero, as
the reaper does after AIMARKET_RAY_IDLE_S) and called cold ``--rounds`` times. Prints: warm
p50, cold first-call latency (min / median / max: starting the replica and its session), and
the resident memory of the replica's process that parking gives back. Usage:

    .venv/bin/python bench/ray_idle.py [--rounds 3] [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import numpy as np  # noqa: E402
import psutil  # noqa: E402


def replica_rss(app: str) -> int:
    """Resident bytes of the application's replica processes."""
    total = 0
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        if any(f"ServeReplica:{app}:" in part for part in p.info["cmdline"] or []):
            total += p.info["memory_info"].rss
    return total


async def main(rounds: int, calls: int) -> None:
    import hashlib

    from serving import ModelRef
    from serving.ray_backend import RayBackend, app_name
    from storefront.demo import digits

    model, _ = digits()
    tmp = Path(tempfile.mkdtemp(prefix="amidle-"))
    path = tmp / "model.onnx"
    path.write_bytes(model)
    ref = ModelRef(key="idle-bench@1", sha256=hashlib.sha256(model).hexdigest(), path=path,
                   latency_us=20)
    backend = RayBackend(temp_dir=tmp / "ray", idle_s=0)  # no reaper: parked by hand here
    await backend.start()
    x = {"X": np.zeros((1, 64), np.float32)}
    try:
        await backend.deploy(ref)
        for _ in range(50):
            await backend.infer(ref.key, x)
        warm = []
        for _ in range(calls):
            t = time.perf_counter()
            await backend.infer(ref.key, x)
            warm.append(time.perf_counter() - t)
        rss = replica_rss(app_name(ref.key))
        cold = []
        for _ in range(rounds):
            await backend.park(ref.key)
            while backend.replicas(ref.key):  # the replica's actor is gone
                await asyncio.sleep(0.1)
            t = time.perf_counter()
            await backend.infer(ref.key, x)
            cold.append(time.perf_counter() - t)
        print(f"warm call (wire path) p50 {statistics.median(warm) * 1e3:.2f} ms "
              f"over {calls} calls")
        print(f"cold first call after scale to zero: min {min(cold):.2f} s, median "
              f"{statistics.median(cold):.2f} s, max {max(cold):.2f} s over {rounds} rounds")
        print(f"replica resident memory given back while parked: {rss / 2**20:.0f} MiB")
    finally:
        await backend.undeploy(ref.key)
        await backend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.calls))
