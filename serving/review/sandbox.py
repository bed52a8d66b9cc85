"""Smoke inference in a separate, resource-limited process.

An uploaded model runs first here, never in the server: a model that hangs is stopped by a
CPU-time limit and a wall-clock timeout, one that allocates without bound by an address-space
limit; either way the server stays up and the upload is refused with a code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import InvalidInput
from ..manifest import Manifest


def smoke_test(model: Path, manifest: Manifest, *, cpu_s: int = 20, wall_s: float = 60,
               mem_bytes: int = 1 << 30, runs: int = 20) -> int:
    """Run the model on generated input in a child process; returns the median batch-1
    latency in microseconds. Raises InvalidInput with code ``smoke_failed``,
    ``smoke_resources`` (memory / CPU limit) or ``smoke_timeout``."""
    job = json.dumps({"model": str(model), "manifest": manifest.model_dump(mode="json"),
                      "runs": runs, "cpu_s": cpu_s, "mem_bytes": mem_bytes})
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    try:
        proc = subprocess.run([sys.executable, "-m", "serving.review"], input=job,
                              text=True, capture_output=True, timeout=wall_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise InvalidInput(f"smoke inference did not finish in {wall_s:g} s",
                           code="smoke_timeout") from exc
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if proc.returncode == 0 and "latency_us" in result:
        return int(result["latency_us"])
    if proc.returncode < 0 or result.get("kind") == "resources":
        raise InvalidInput(
            "smoke inference exceeded its resource limits (memory "
            f"{mem_bytes >> 20} MiB, CPU {cpu_s} s): {result.get('error', 'killed')}",
            code="smoke_resources")
    raise InvalidInput(f"smoke inference failed on generated input: "
                       f"{result.get('error', proc.stderr[-500:])}", code="smoke_failed")


def _child() -> None:
    import resource

    job = json.loads(sys.stdin.read())
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["mem_bytes"], job["mem_bytes"]))
    try:
        import statistics
        import time

        from ..runtime import new_session, sample_inputs
        from ..tasks import postprocess, prepare_call, sample_payload

        manifest = Manifest.model_validate(job["manifest"])
        sess = new_session(job["model"])
        feeds = sample_inputs(manifest, batch=1)
        times = []
        for _ in range(job["runs"]):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t0)
        payload = sample_payload(manifest)
        if payload is not None:  # the task's whole pipeline, on generated input
            try:
                tensors, context = prepare_call(manifest, payload)
                names = [o.name for o in sess.get_outputs()]
                postprocess(manifest, dict(zip(names, sess.run(None, tensors), strict=True)),
                            context)
            except Exception as exc:
                raise RuntimeError(f"the {manifest.task} pipeline (pre-processing, model, "
                                   f"post-processing) failed on a generated "
                                   f"{next(iter(payload))}: {exc}") from exc
        print(json.dumps({"latency_us": int(statistics.median(times) * 1e6)}))
    except MemoryError as exc:
        print(json.dumps({"kind": "resources", "error": f"out of memory: {exc}"}))
        sys.exit(3)
    except Exception as exc:
        text = str(exc)[:400]
        kind = "resources" if "alloc" in text.lower() or "memory" in text.lower() else "failed"
        print(json.dumps({"kind": kind, "error": text}))
        sys.exit(2)
