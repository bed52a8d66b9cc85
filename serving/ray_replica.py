"""The Ray Serve replica of one listing version: an onnxruntime session, optional batching.

Runs inside Ray worker processes; imported only by the ``ray`` backend. Replies are tagged
tuples rather than raised exceptions so that no exception class has to survive pickling:
``("ok", outputs)``, ``("invalid", message)`` (the input's fault, 422) or ``("failed",
message)`` (the model's fault, 502).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from ray import serve

from .ray_models import fetch_model, normal_priority
from .runtime import new_session
from .wire import WIRE_KV_PREFIX, serve_wire

Reply = tuple[str, Any]
INLINE_US = 200  # models faster than this run on the replica's event loop; heavier: a thread


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # a faster loop where installed (uvicorn[standard] brings it)

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class ModelReplica:
    """One onnxruntime session; ``reconfigure`` (Serve's user_config) sets dynamic batching.

    Besides Serve's own request path (handles), the replica answers the gateway's frames
    (``serving.wire``) on a port of its node, announced in Ray's KV store. All model work runs
    on that listener's event loop, so ``@serve.batch`` sees the calls of both paths.
    """

    def __init__(self, path: str, sha256: str, latency_us: int = 0, app: str = "",
                 wire_secret: str = "") -> None:
        self.sha256 = sha256
        self.niceness = normal_priority()
        # the bytes come from the cluster's model store: this node may never have seen ``path``
        self._session = new_session(fetch_model(sha256))
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._inline = 0 < latency_us <= INLINE_US
        self._batching = False
        self._loop = _new_loop()
        threading.Thread(target=self._loop.run_forever, name="wire", daemon=True).start()
        self._kv_key = ""
        if app and wire_secret:
            self._listen(app, bytes.fromhex(wire_secret))

    def _listen(self, app: str, secret: bytes) -> None:
        import ray
        from ray.experimental.internal_kv import _internal_kv_put

        host = ray.util.get_node_ip_address()
        server = asyncio.run_coroutine_threadsafe(
            serve_wire(self._call, secret, app, host), self._loop).result(30)
        port = server.sockets[0].getsockname()[1]
        replica = serve.get_replica_context().replica_id.unique_id
        self._kv_key = f"{WIRE_KV_PREFIX}{app}:{replica}"
        _internal_kv_put(self._kv_key, f"{host}:{port}")

    def __del__(self) -> None:
        if self._kv_key:
            try:
                from ray.experimental.internal_kv import _internal_kv_del

                _internal_kv_del(self._kv_key)
            except Exception:
                pass  # Ray going down: the gateway drops endpoints it cannot reach
        self._loop.call_soon_threadsafe(self._loop.stop)

    def reconfigure(self, config: dict[str, Any]) -> None:
        size = int(config.get("max_batch_size", 1))
        self._batching = size > 1
        if self._batching:
            batched: Any = self._batched  # @serve.batch adds these setters at run time
            batched.set_max_batch_size(size)
            batched.set_batch_wait_timeout_s(float(config.get("batch_wait_ms", 1)) / 1000)

    async def __call__(self, inputs: dict[str, np.ndarray]) -> Reply:
        """Serve's request path (DeploymentHandle calls), run on the model's loop."""
        future = asyncio.run_coroutine_threadsafe(self._call(inputs), self._loop)
        return await asyncio.wrap_future(future)

    async def _call(self, inputs: dict[str, np.ndarray]) -> Reply:
        if self._batching:
            return await self._batched(inputs)
        return await self._run(inputs)

    async def _run(self, inputs: dict[str, np.ndarray]) -> Reply:
        try:
            if self._inline:
                results = self._session.run(None, inputs)
            else:
                results = await asyncio.to_thread(self._session.run, None, inputs)
        except InvalidArgument as exc:
            return ("invalid", f"the model refused the input: {exc}")
        except Exception as exc:
            return ("failed", f"inference failed: {type(exc).__name__}")
        return ("ok", dict(zip(self._outputs, results, strict=True)))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.001)
    async def _batched(self, requests: list[dict[str, np.ndarray]]) -> list[Reply]:
        """Concatenate the requests along the batch axis, run once, split the outputs."""
        first = requests[0]
        same = all(
            r.keys() == first.keys()
            and all(r[k].shape[1:] == first[k].shape[1:] and r[k].dtype == first[k].dtype
                    for k in first)
            for r in requests
        )
        if len(requests) == 1 or not same:
            return [await self._run(r) for r in requests]
        sizes = [next(iter(r.values())).shape[0] for r in requests]
        merged = {k: np.concatenate([r[k] for r in requests]) for k in first}
        status, out = await self._run(merged)
        if status != "ok" or any(v.shape[:1] != (sum(sizes),) for v in out.values()):
            # one bad request must not fail the others, and outputs that are not per-row
            # cannot be split: run them alone
            return [await self._run(r) for r in requests]
        bounds = np.cumsum(sizes)[:-1]
        split = {k: np.split(v, bounds) for k, v in out.items()}
        return [("ok", {k: split[k][i] for k in out}) for i in range(len(requests))]
