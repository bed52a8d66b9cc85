"""The ``ray`` backend: each live listing version is a Ray Serve application.

The application of ``slug@3`` is named ``slug-v3``; it holds one deployment, ``model``, whose
replicas run :class:`serving.ray_replica.ModelReplica`. Its autoscaling (min / max replicas,
target ongoing requests) and dynamic batching come from the listing's ``ServingOptions``;
changing them redeploys in place.

How a call reaches a replica: a listing with a fixed number of replicas (min = max, the
default) is called over ``serving.wire``, straight to the replicas' own ports (round robin),
an order of magnitude faster than a handle; one that autoscales is called through a
``DeploymentHandle``, so that Serve's autoscaler sees its load. Either way a replica that dies
mid-call surfaces as :class:`ServiceUnavailable` (503, the gateway releases the reservation)
and Serve starts a new one, which announces itself in Ray's KV store.

Scale to zero: a fixed-size listing version not called for ``idle_s`` (AIMARKET_RAY_IDLE_S;
0: never) by any gateway process is parked: its deployment is scaled to zero replicas through
Serve's external scaler (the application, its settings and this backend's record stay). Its
next call scales it back to its replicas and waits for them at most ``load_wait_s``
(AIMARKET_MODEL_LOAD_WAIT_S), else answers 503 ``backend_unavailable`` with Retry-After, not
charged (the start goes on; the next call finds it warm). Warm versions keep the wire path:
the idle clock is a dict write per call, and each process publishes its versions' last call
to Ray's KV store once per reaper tick, so a version called through another gateway is not
parked. A version parked by another process is found on the call: no replica reachable, the
KV store says parked, this process wakes it. Autoscaling listings are left to Serve's
autoscaler (a seller's ``min_replicas: 0`` scales them to zero there).

Without an address this process starts a local Ray (no dashboard, no usage stats, token auth
off since it listens on loopback only, its files under ``temp_dir``) and stops it on close.
With an address it joins that cluster and leaves the applications running on close: other
gateway processes share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import ray_scaling
from .backend import ModelRef, ServingOptions
from .errors import InferenceFailed, InvalidInput, NotFound, ServiceUnavailable
from .ray_models import publish_model
from .ray_scaling import (
    LAST_CALL_KV_PREFIX,
    PARKED_KV_PREFIX,
    app_name,
    deployment_options,
    fixed_size,
)
from .wire import WIRE_KV_PREFIX, WireClient

SETTINGS_KV_PREFIX = "aimarket:deployed:"  # + app -> what it was deployed with
IDLE_S = 600.0  # default idle time before a fixed-size version is scaled to zero
# Serve's cluster-wide options (a KubeRay RayService's serveConfigV2 sets the same, see
# helm/aimarket): no Serve HTTP proxy, the gateway is the front door.
SERVE_START_OPTIONS: dict[str, Any] = {"proxy_location": "Disabled",
                                       "http_options": {"host": "127.0.0.1"}}
REFRESH_S = 2.0  # how often a listing's replica addresses are re-read while it is called
# A fixed-size listing whose replicas are all unreachable directly (being replaced: a node
# died) waits this long for Serve's handle to find one, then answers 503 (not charged).
HANDLE_WAIT_S = 3.0
# Ray's workers run at nice 15 unless the raylet says otherwise; replicas answer paid calls.
NODE_ENV = {"RAY_worker_niceness": "0",
            # Serve's spread scheduler (its default), not its pack one: one listing's
            # replicas go to different nodes where there are several
            "RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY": "0",
            "RAY_SERVE_USE_COMPACT_SCHEDULING_STRATEGY": "0"}

log = logging.getLogger(__name__)
# Unix socket paths under Ray's temp dir must stay below 108 bytes; Ray adds ~70.
MAX_TEMP_DIR_LEN = 36


class RayBackend:
    """Listing versions as Ray Serve applications, called over ``serving.wire`` or handles."""

    name = "ray"

    def __init__(self, *, address: str | None = None, temp_dir: Path | None = None,
                 wire_secret: str | None = None, idle_s: float = IDLE_S,
                 load_wait_s: float = 30.0) -> None:
        """``wire_secret``: 64 hex digits shared by every gateway process of this marketplace
        (replicas accept only callers that know it); random when unset (one process).
        ``idle_s``: park fixed-size versions not called for this long (0: never);
        ``load_wait_s``: how long a call to a parked version waits for its replicas."""
        self.idle_s = idle_s
        self.load_wait_s = load_wait_s
        self._last: dict[str, float] = {}  # key -> monotonic time of its last call here
        self._published: dict[str, float] = {}  # key -> the last call published to the KV
        self._parked: set[str] = set()
        self._waking: dict[str, asyncio.Task[None]] = {}
        self._parking: dict[str, asyncio.Future[bool]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._address = address
        self._temp_dir = temp_dir
        self._secret = wire_secret or secrets.token_hex(32)
        self._handles: dict[str, Any] = {}
        self._wires: dict[str, list[WireClient]] = {}
        self._rr: dict[str, itertools.count[int]] = {}
        self._refreshed: dict[str, float] = {}
        self._refreshing: set[str] = set()
        self._options: dict[str, ServingOptions] = {}
        self._owns_ray = False
        self._own_temp = ""  # a temp dir this backend made for Ray (the data dir's was too long)
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._start)
        self.loop = asyncio.get_running_loop()
        if self.idle_s > 0:
            self._reaper = self.loop.create_task(self._reap())

    def _start(self) -> None:
        import ray
        from ray import serve

        if not ray.is_initialized():
            if self._address:
                ray.init(address=self._address, logging_level=logging.WARNING,
                         log_to_driver=False)
            else:
                # Loopback-only local cluster: token auth would write ~/.ray; no phoning home.
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                for name, value in NODE_ENV.items():  # read by the raylet and Serve
                    os.environ.setdefault(name, value)
                ray.init(include_dashboard=False, _temp_dir=self._ray_temp_dir(),
                         logging_level=logging.WARNING, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
                self._owns_ray = True
        serve.start(**SERVE_START_OPTIONS)

    def _ray_temp_dir(self) -> str:
        wanted = self._temp_dir
        if wanted is not None and len(str(wanted.resolve())) <= MAX_TEMP_DIR_LEN:
            wanted.mkdir(parents=True, exist_ok=True)
            return str(wanted.resolve())
        short = self._own_temp = tempfile.mkdtemp(prefix="amray-")
        log.info("Ray's files go to %s (%s is too long for its socket paths)", short, wanted)
        return short

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self._handles.clear()
        for clients in self._wires.values():
            for client in clients:
                client.close()
        self._wires.clear()
        if self._owns_ray:
            await asyncio.to_thread(self._shutdown)
            if self._own_temp:
                shutil.rmtree(self._own_temp, ignore_errors=True)

    @staticmethod
    def _shutdown() -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    # -- deployments -------------------------------------------------------------------------
    async def deploy(self, ref: ModelRef) -> None:
        if self._options.get(ref.key) == ref.serving and ref.key in self._handles:
            return
        async with self._lock:
            if self._options.get(ref.key) == ref.serving and ref.key in self._handles:
                return
            handle, parked = await asyncio.to_thread(self._run, ref)
            self._handles[ref.key] = handle
            self._options[ref.key] = ref.serving
            self._last[ref.key] = time.monotonic()  # idle from now on, not from the epoch
            if parked:  # adopted while parked (by another process): its next call wakes it
                self._parked.add(ref.key)
            else:
                self._parked.discard(ref.key)
            if self._wired(ref.key) and not parked:
                await self._refresh(ref.key, wait_for=ref.serving.min_replicas)

    def _run(self, ref: ModelRef) -> tuple[Any, bool]:
        """Deploy (or adopt) the application: (its handle, whether it is parked)."""
        from ray import serve
        from ray.experimental.internal_kv import (
            _internal_kv_del,
            _internal_kv_get,
            _internal_kv_put,
        )

        from .ray_replica import ModelReplica

        name = app_name(ref.key)
        # serve.run replaces the replicas even when nothing changed: another gateway process
        # (or a restarted one) adopts a running application deployed with the same settings.
        # Not the path: gateways with their own data dirs (other machines) share the app.
        settings = json.dumps([asdict(ref.serving), ref.sha256, ref.latency_us,
                               hashlib.sha256(self._secret.encode()).hexdigest(),
                               "external-scaler"]).encode()
        app_status = serve.status().applications.get(name)
        if (app_status is not None and app_status.status == "RUNNING"
                and _internal_kv_get(SETTINGS_KV_PREFIX + name) == settings):
            parked = _internal_kv_get(PARKED_KV_PREFIX + name) is not None
            return serve.get_app_handle(name), parked
        # The replicas read the model from the cluster's object store, on whatever node.
        publish_model(ref.sha256, ref.path.read_bytes)
        deployment: Any = serve.deployment(ModelReplica)  # a Deployment (stubs say a decorator)
        app = deployment.options(**deployment_options(ref.serving)).bind(
            str(ref.path), ref.sha256, ref.latency_us, name, self._secret)
        handle = serve.run(app, name=name, route_prefix=None,
                           external_scaler_enabled=fixed_size(ref.serving))
        _internal_kv_put(SETTINGS_KV_PREFIX + name, settings)
        _internal_kv_del(PARKED_KV_PREFIX + name)  # serve.run set its replicas again
        return handle, False

    async def undeploy(self, key: str) -> None:
        from ray import serve

        self._handles.pop(key, None)
        self._options.pop(key, None)
        self._parked.discard(key)
        self._last.pop(key, None)
        self._published.pop(key, None)
        for client in self._wires.pop(key, []):
            client.close()
        await asyncio.to_thread(serve.delete, app_name(key))
        await asyncio.to_thread(self._forget_addresses, key)

    # -- replica addresses (serving.wire) ----------------------------------------------------
    def _wired(self, key: str) -> bool:
        o = self._options.get(key)
        return o is not None and o.min_replicas == o.max_replicas

    async def _refresh(self, key: str, wait_for: int = 0) -> None:
        """Re-read the application's replica addresses; with ``wait_for``, until that many
        answer (a deployment's replicas announce themselves as they start)."""
        deadline = time.monotonic() + 30
        while True:
            found = await asyncio.to_thread(self._addresses, key)
            known = {c.kv_key: c for c in self._wires.get(key, []) if not c.broken}
            self._wires[key] = [known.get(kv) or self._client(key, kv, host, port)
                                for kv, host, port in found]
            self._refreshed[key] = time.monotonic()
            if len(found) >= wait_for or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    def _client(self, key: str, kv_key: str, host: str, port: int) -> WireClient:
        client = WireClient(host, port, bytes.fromhex(self._secret), app_name(key))
        client.kv_key = kv_key
        return client

    def _refresh_soon(self, key: str) -> None:
        if key in self._refreshing:
            return
        self._refreshing.add(key)

        async def run() -> None:
            try:
                await self._refresh(key)
            except Exception:
                log.exception("reading the replica addresses of %s failed", key)
            finally:
                self._refreshing.discard(key)

        asyncio.get_running_loop().create_task(run())

    @staticmethod
    def _addresses(key: str) -> list[tuple[str, str, int]]:
        """(KV key, host, port) of each replica that announced itself."""
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        out = []
        for k in _internal_kv_list(f"{WIRE_KV_PREFIX}{app_name(key)}:"):
            value = _internal_kv_get(k)
            if value:
                host, _, port = value.decode().rpartition(":")
                out.append((k.decode(), host, int(port)))
        return sorted(out)

    @staticmethod
    def _forget_replica(kv_key: str) -> None:
        """A replica that refuses connections is dead (Serve is replacing it): drop its entry."""
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(kv_key)

    @staticmethod
    def _forget_addresses(key: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(f"{WIRE_KV_PREFIX}{app_name(key)}:", del_by_prefix=True)
        for prefix in (SETTINGS_KV_PREFIX, PARKED_KV_PREFIX, LAST_CALL_KV_PREFIX):
            _internal_kv_del(prefix + app_name(key))

    def is_deployed(self, key: str) -> bool:
        return key in self._handles

    def replicas(self, key: str) -> list[str]:
        """Actor names of the application's live replicas (for operators and tests)."""
        import ray

        prefix = f"SERVE_REPLICA::{app_name(key)}#model#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith(prefix))

    # -- the hot path ------------------------------------------------------------------------
    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        handle = self._handles.get(key)
        if handle is None:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        now = self._last[key] = time.monotonic()
        if self._wired(key):
            if key in self._parked:
                await self._wake(key)
            elif now - self._refreshed.get(key, 0) > REFRESH_S:
                self._refresh_soon(key)
            result = await self._call_wired(key, inputs)
            if result is None and await asyncio.to_thread(ray_scaling.is_parked, app_name(key)):
                await self._wake(key)  # parked by another gateway process
                result = await self._call_wired(key, inputs)
            if result is not None:
                return result
            # no replica reachable directly (all being replaced): Serve's handle waits for one
        try:
            if self._wired(key):
                status, result = await asyncio.wait_for(_result(handle.remote(inputs)),
                                                        HANDLE_WAIT_S)
            else:
                status, result = await handle.remote(inputs)
        except Exception as exc:  # a dead replica, a deleted application, Ray going away
            raise ServiceUnavailable(
                "the model's replica is unavailable; the call was not charged, retry it",
                code="replica_unavailable", headers={"Retry-After": "1"},
            ) from exc
        if status == "ok":
            return result
        if status == "invalid":
            raise InvalidInput(result)
        raise InferenceFailed(result)

    async def _call_wired(self, key: str, inputs: dict[str, np.ndarray]
                          ) -> dict[str, np.ndarray] | None:
        """The call over the wire to one of the replicas; None: none was reachable."""
        clients = self._wires.get(key, [])
        turn = next(self._rr.setdefault(key, itertools.count()))
        for i in range(len(clients)):
            client = clients[(turn + i) % len(clients)]
            if client.broken:
                continue
            try:
                return await client.call(inputs)
            except ConnectionError:  # nothing was sent: another replica may take it
                await asyncio.to_thread(self._forget_replica, client.kv_key)
                self._refresh_soon(key)
            except ServiceUnavailable:
                self._refresh_soon(key)
                if await asyncio.to_thread(ray_scaling.is_parked, app_name(key)):
                    return None  # scaled to zero by another process: wake it, call again
                raise
        return None

    # -- scale to zero -----------------------------------------------------------------------
    def replicas_running(self, key: str) -> int | None:
        """How many replicas of ``key`` Serve reports running (None: not deployed)."""
        from ray import serve
        from ray.serve._private.common import ReplicaState

        app = serve.status().applications.get(app_name(key))
        deployment = app.deployments.get("model") if app is not None else None
        if deployment is None:
            return None
        return int(deployment.replica_states.get(ReplicaState.RUNNING, 0))

    def is_parked(self, key: str) -> bool:
        """Whether this process scaled ``key`` to zero (or found it so) and has not woken it."""
        return key in self._parked

    async def _reap(self) -> None:
        """Every tick: publish this process's last calls, then park what is idle everywhere."""
        while True:
            await asyncio.sleep(max(0.5, min(self.idle_s / 4, 30.0)))
            try:
                await self.park_idle()
            except Exception:
                log.exception("scaling idle Ray listings to zero failed")

    async def park_idle(self, idle_s: float | None = None) -> list[str]:
        """Scale to zero the fixed-size versions no gateway called for ``idle_s`` (default:
        this backend's); returns the keys parked now."""
        idle = self.idle_s if idle_s is None else idle_s
        now, wall = time.monotonic(), time.time()
        fresh = {k: wall - (now - t) for k, t in self._last.items()
                 if self._published.get(k) != t}
        if fresh:
            await asyncio.to_thread(ray_scaling.publish_calls,
                                    {app_name(k): w for k, w in fresh.items()})
            self._published.update({k: self._last[k] for k in fresh})
        candidates = [k for k in list(self._handles) if self._wired(k)
                      and k not in self._parked and k not in self._waking
                      and now - self._last.get(k, now) >= idle]
        parked = []
        for key in candidates:
            if await self._park_one(key, wall - idle):
                parked.append(key)
        return parked

    async def park(self, key: str) -> bool:
        """Scale ``key`` to zero now, whoever called it last (for operators and tests)."""
        return key in self._handles and self._wired(key) and await self._park_one(key, None)

    async def _park_one(self, key: str, called_before: float | None) -> bool:
        # Parked first: a call arriving meanwhile waits for the wake, which waits for this.
        self._parked.add(key)
        for client in self._wires.pop(key, []):
            client.close()
        task = asyncio.ensure_future(
            asyncio.to_thread(ray_scaling.park, app_name(key), called_before))
        self._parking[key] = task
        try:
            ok = await task
        finally:
            self._parking.pop(key, None)
        if not ok:
            self._parked.discard(key)
            await self._refresh(key)
        return ok

    async def _wake(self, key: str) -> None:
        """Scale a parked version back to its replicas; the call waits at most
        ``load_wait_s`` for them, else 503 with Retry-After (not charged; the start goes on)."""
        task = self._waking.get(key)
        if task is None:
            task = self._waking[key] = asyncio.get_running_loop().create_task(self._start_up(key))
            task.add_done_callback(lambda t: self._woken(key, t))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.load_wait_s)
        except TimeoutError:
            wait = max(1, math.ceil(self.load_wait_s))
            raise ServiceUnavailable(
                f"model {key} is starting its replicas; retry in {wait} s (this call was not "
                "charged)", code="backend_unavailable", headers={"Retry-After": str(wait)},
            ) from None

    def _woken(self, key: str, task: asyncio.Task[None]) -> None:
        self._waking.pop(key, None)
        if not task.cancelled() and task.exception() is not None:  # the callers saw it
            log.warning("starting %s again failed: %r", key, task.exception())

    async def _start_up(self, key: str) -> None:
        options = self._options.get(key)
        if options is None:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        parking = self._parking.get(key)
        if parking is not None:  # being parked a moment ago: let that finish first
            with contextlib.suppress(Exception):
                await asyncio.shield(parking)
        try:
            await asyncio.to_thread(ray_scaling.unpark, app_name(key), options.min_replicas)
        except Exception as exc:
            raise ServiceUnavailable(
                f"model {key} could not be started; the call was not charged, retry it",
                code="backend_unavailable", headers={"Retry-After": "1"}) from exc
        self._parked.discard(key)
        await self._refresh(key, wait_for=options.min_replicas)
        log.info("scaled %s back to %d replicas", key, options.min_replicas)


async def _result(response: Any) -> Any:
    """Await a DeploymentResponse (``asyncio.wait_for`` takes coroutines); cancelled with it."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise
