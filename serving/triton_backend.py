"""The ``triton`` backend: each live listing version is a model of a Triton Inference Server.

``slug@3`` is the Triton model ``slug-v3`` (one model per listing version, see
``serving.triton_repo``), written into the model repository and loaded through Triton's model
repository API (explicit model control); undeploying unloads it and removes its folder. Calls
go over KServe v2 HTTP with binary tensors on kept-alive raw connections
(``serving.triton_http``); tritonclient's asyncio client does the control plane (load, unload,
health).

Two ways to have a server:

- bundled (no ``url``): this process starts the ``tritonserver`` of the ``nvidia-pytriton``
  wheel (``serving.triton_server``) with its workspace and repository under ``workspace``, in
  the ``python`` repository format (that server has only the python backend), stops it on
  close, and watches it: a dead server is started again and every deployed version reloaded,
  without a restart of the app;
- existing (``url``): the versions go into ``repository`` (the folder that server reads) in the
  given format (``onnxruntime`` for a full Triton image); a version the server lost (it
  restarted, or evicted it) is loaded again when a call finds it missing, the call waiting for
  it (bounded).

Concurrent calls of one batched model (every tensor leads with a dynamic batch dimension) are
coalesced here, before the hop, into one Triton request (``serving.batching``, with an awaited
runner): each request costs Triton's HTTP front end and the python stub far more than the rows
in it, so one request of 8 rows costs about what one of 1 does. A listing with
``max_batch_size`` > 1 gets batches of that many rows within ``batch_wait_ms`` (and Triton's
own ``dynamic_batching`` for what still arrives apart); otherwise up to ``AUTO_ROWS`` rows of
whatever is queued, adaptive (kept only while a batched row costs less than a single one);
``batching: off`` sends every call alone.

Memory: with a budget (``memory_budget``, the local backend's AIMARKET_MODEL_MEMORY_MB) the
versions loaded in Triton are kept under it, least recently called first out
(``serving.residency``): an evicted version is unloaded through the repository API (its files
stay) and loaded again by its next call, which waits for it at most ``load_wait_s`` (else 503
``backend_unavailable`` with Retry-After, uncharged). A version's cost is its instances' onnx
sessions (the file x 2, as locally) plus, in the python format, each instance's stub process
(``STUB_BYTES``: its proportional share of memory, measured ~32 MB here).

Failures: the server down, or a model it cannot load, is :class:`ServiceUnavailable`
(``backend_unavailable``, ``Retry-After``): the gateway releases the hold, nothing is charged.
Deploying a model Triton refuses raises the same with Triton's reason (approval then fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .backend import ModelRef, ServingOptions
from .batching import Batcher, BatchStats
from .errors import InferenceFailed, InvalidInput, NotFound, ServiceUnavailable
from .residency import Residency, resident_cost
from .triton_http import TritonDown, TritonError, TritonHTTP
from .triton_repo import (
    Format,
    batched,
    model_tensors,
    remove_model,
    scalar_rows,
    triton_name,
    write_model,
)
from .triton_server import TritonProcess

log = logging.getLogger(__name__)

WATCH_S = 0.2  # how often the bundled server's process is checked
RELOAD_WAIT_S = 20.0  # longest a call waits for a lost version by default
STUB_BYTES = 32 << 20  # a python-backend stub's share of memory (PSS ~32 MB, RSS ~66 MB here)
CALL_TIMEOUT_S = 60.0
AUTO_ROWS = 16  # the most rows an automatic (adaptive) coalesced request carries


def _unavailable(message: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"{message}; the call was not charged, retry it",
                              code="backend_unavailable", headers={"Retry-After": "1"})


def coalesce_rows(ref: ModelRef, batch: bool) -> tuple[int, bool]:
    """(rows one coalesced Triton request may carry, adaptive); rows 0: calls go alone."""
    opts: ServingOptions = ref.serving
    if not batch or opts.batching == "off" or ref.max_batch <= 1:
        return 0, False
    if opts.max_batch_size > 1:
        return min(opts.max_batch_size, ref.max_batch), False
    return min(AUTO_ROWS, ref.max_batch), True


class _Model:
    __slots__ = ("ref", "name", "inputs", "outputs", "flat_in", "col_out", "batch")

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.name = triton_name(ref.key)
        ins, outs = model_tensors(ref.path)
        self.inputs = {t.name: t for t in ins}
        self.outputs = [t.name for t in outs]
        batch = batched(ins, outs)
        # a batch of scalars travels as [batch, 1] (Triton's dims cannot be empty)
        self.flat_in = scalar_rows(ins) if batch else set()
        self.col_out = scalar_rows(outs) if batch else set()
        self.batch = batch


class TritonBackend:
    """Listing versions as Triton models, bundled server or an existing one."""

    name = "triton"

    def __init__(self, *, workspace: Path, url: str | None = None,
                 repository: Path | None = None, fmt: Format = "python",
                 memory_budget: int | None = None, load_wait_s: float = RELOAD_WAIT_S) -> None:
        self._url = url.removeprefix("http://") if url else None
        self._proc = None if url else TritonProcess(workspace)
        self._repository = repository or workspace / "models"
        if self._proc is not None:
            self._proc.repository = self._repository
            fmt = "python"  # the only backend the bundled server has
        self._fmt: Format = fmt
        self._models: dict[str, _Model] = {}
        self._batchers: dict[str, Batcher] = {}
        self._loaded: set[str] = set()  # keys Triton has loaded (as far as we know)
        self._reloading: dict[str, asyncio.Task[None]] = {}
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self._residency = Residency(memory_budget)
        self._load_wait_s = load_wait_s
        self._client: Any = None
        self._wire: TritonHTTP | None = None
        self._up = False
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0  # bundled server restarts (for operators and tests)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._proc.url if self._proc is not None else (self._url or "")

    @property
    def server_pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        if self._proc is not None:
            await asyncio.to_thread(self._proc.start)
        self._repository.mkdir(parents=True, exist_ok=True)
        self._connect()
        self._up = self._proc is not None or await self._live()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _connect(self) -> None:
        from tritonclient.http.aio import InferenceServerClient

        old, self._client = self._client, InferenceServerClient(self.url, conn_limit=256)
        old_wire, self._wire = self._wire, TritonHTTP(self.url, timeout_s=CALL_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        if old is not None:
            loop.create_task(old.close())
        if old_wire is not None:
            loop.create_task(old_wire.close())

    async def _live(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.is_server_live(), 2))
        except Exception:
            return False

    async def close(self) -> None:
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in [*self._reloading.values(), *self._unloading.values()]:
            task.cancel()
        if self._client is not None:
            if self._proc is None:  # leave the shared server as we found it
                for key in list(self._models):
                    with contextlib.suppress(Exception):
                        await self._client.unload_model(self._models[key].name)
            await self._client.close()
        if self._wire is not None:
            await self._wire.close()
        if self._proc is not None:
            await asyncio.to_thread(self._proc.stop)

    async def _watch(self) -> None:
        """Bring a dead bundled server back (an existing one: notice it went and came back)."""
        while not self._closing:
            await asyncio.sleep(WATCH_S if self._proc is not None else 1.0)
            try:
                if self._proc is not None and not self._proc.alive():
                    await self._restart()
                elif self._proc is None:
                    live = await self._live()
                    if live and not self._up:
                        self._loaded.clear()  # it restarted: it knows none of ours
                        await self._reload_all()
                    self._up = live
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching Triton failed; trying again")
                await asyncio.sleep(1)

    async def _restart(self) -> None:
        assert self._proc is not None
        self._up = False
        self._loaded.clear()
        log.warning("tritonserver (pid %s) died; starting it again", self._proc.pid)
        await asyncio.to_thread(self._proc.stop)
        await asyncio.to_thread(self._proc.start)
        self._connect()
        self.restarts += 1
        await self._reload_all()
        self._up = True

    async def _reload_all(self) -> None:
        """Load again what was resident (the rest loads on its next call)."""
        models = [self._models[k] for k in self._residency.held() if k in self._models]
        results = await asyncio.gather(*(self._load(m) for m in models),
                                       return_exceptions=True)
        for model, result in zip(models, results, strict=True):
            if isinstance(result, BaseException):
                log.error("reloading %s into Triton failed: %s", model.ref.key, result)

    # -- deployments -------------------------------------------------------------------------
    async def _load(self, model: _Model) -> None:
        from tritonclient.utils import InferenceServerException

        key = model.ref.key
        unloading = self._unloading.get(key)
        if unloading is not None:  # evicted a moment ago: let that finish first
            with contextlib.suppress(Exception):
                await asyncio.shield(unloading)
        try:
            await self._client.load_model(model.name)
        except InferenceServerException as exc:
            raise _unavailable(f"Triton could not load {key}: {exc.message()}") from exc
        except Exception as exc:
            raise _unavailable(f"Triton is unavailable ({type(exc).__name__})") from exc
        self._loaded.add(key)
        for old in self._residency.admit(key, self._cost(model.ref)):
            self._evict(old)

    def _cost(self, ref: ModelRef) -> int:
        stub = STUB_BYTES if self._fmt == "python" else 0
        return (resident_cost(ref.path) + stub) * max(1, ref.serving.min_replicas)

    def _evict(self, key: str) -> None:
        """Unload ``key`` from Triton to stay in the memory budget (it stays deployed)."""
        self._loaded.discard(key)
        model = self._models.get(key)
        if model is None or key in self._unloading:
            return
        log.info("unloading %s from Triton: the model memory budget is full", key)

        async def unload() -> None:
            try:
                await self._client.unload_model(model.name)
            except Exception as exc:  # a dead server has unloaded it already
                log.warning("unloading %s failed: %r", key, exc)
            finally:
                self._unloading.pop(key, None)

        self._unloading[key] = asyncio.get_running_loop().create_task(unload())

    def is_resident(self, key: str) -> bool:
        """Whether ``key`` is loaded in Triton now (as far as this backend knows)."""
        return key in self._loaded

    def resident_bytes(self) -> int:
        """The estimated memory of the versions loaded in Triton."""
        return self._residency.used

    async def deploy(self, ref: ModelRef) -> None:
        """A version new here is written and loaded now (approval verifies that it loads).
        A known one gets its changed serving options written, reloaded if it is loaded; one
        that is not loaded (evicted, or lost by the server) loads on its next call."""
        current = self._models.get(ref.key)
        if current is not None and current.ref == ref:
            return
        async with self._lock:
            current = self._models.get(ref.key)
            if current is not None and current.ref == ref:
                return
            model = await asyncio.to_thread(_Model, ref)
            await asyncio.to_thread(write_model, self._repository, ref, self._fmt)
            if current is not None and ref.key not in self._loaded:
                self._models[ref.key] = model  # the options apply at its next load
                self._configure(model)
                return
            try:
                await self._load(model)  # a loaded model is reloaded (it serves meanwhile)
            except ServiceUnavailable:
                if current is None:
                    await asyncio.to_thread(remove_model, self._repository, ref.key)
                elif current.ref != ref:  # keep serving what was there
                    await asyncio.to_thread(write_model, self._repository, current.ref,
                                            self._fmt)
                raise
            self._models[ref.key] = model
            self._configure(model)

    def _configure(self, model: _Model) -> None:
        rows, adaptive = coalesce_rows(model.ref, model.batch)
        if rows <= 1:
            self._batchers.pop(model.ref.key, None)
            return
        # the listing's wait when it asked for batches; else what is queued goes at once
        wait_s = model.ref.serving.batch_wait_ms / 1000 if not adaptive else 0.0
        # one request in flight per Triton instance: the calls arriving meanwhile queue here
        # and go together in the next one
        slots = max(1, model.ref.serving.min_replicas)
        batcher = self._batchers.get(model.ref.key)
        if batcher is None:
            self._batchers[model.ref.key] = Batcher(
                partial(self._run_rows, model.ref.key), None, max_rows=rows, wait_s=wait_s,
                slots=slots, adaptive=adaptive)
        else:
            batcher.configure(max_rows=rows, wait_s=wait_s, adaptive=adaptive, slots=slots)

    def batch_stats(self, key: str) -> BatchStats | None:
        """How calls of ``key`` were coalesced into Triton requests; None: not coalesced."""
        batcher = self._batchers.get(key)
        return None if batcher is None else batcher.stats

    async def undeploy(self, key: str) -> None:
        model = self._models.pop(key, None)
        self._batchers.pop(key, None)
        self._loaded.discard(key)
        self._residency.drop(key)
        if model is None:
            return
        with contextlib.suppress(Exception):  # a dead server has unloaded it already
            await self._client.unload_model(model.name)
        await asyncio.to_thread(remove_model, self._repository, key)

    def is_deployed(self, key: str) -> bool:
        return key in self._models

    def loaded(self) -> list[str]:
        """Keys loaded in Triton, as this backend knows them."""
        return sorted(self._loaded)

    # -- the hot path ------------------------------------------------------------------------
    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self._models.get(key)
        if model is None:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        if not self._up:
            raise _unavailable("the Triton server is restarting")
        if key not in self._loaded:
            await self._reload(model)
        else:
            self._residency.touch(key)
        try:
            return await self._submit(model, inputs)
        except _Lost:
            self._loaded.discard(key)
            if key not in self._models:  # undeployed meanwhile (moved to another backend)
                raise NotFound(f"model {key} is not deployed", code="model_not_deployed"
                               ) from None
            await self._reload(model)
            try:
                return await self._submit(model, inputs)
            except _Lost as exc:
                raise _unavailable(f"Triton cannot serve {key} now") from exc

    async def _submit(self, model: _Model, inputs: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """One call, coalesced with others of its model where it can be."""
        batcher = self._batchers.get(model.ref.key)
        rows = _rows(inputs) if batcher is not None else 0
        if batcher is None or rows < 1:
            return await self._call(model, inputs)
        outs = await batcher.submit(inputs, rows)
        return dict(zip(model.outputs, outs, strict=True))

    async def _run_rows(self, key: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The batcher's runner: one Triton request, the outputs in the model's order."""
        model = self._models.get(key)
        if model is None:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        result = await self._call(model, feeds)
        return [result[n] for n in model.outputs]

    async def _reload(self, model: _Model) -> None:
        """Load a version the server lost again; the call waits for it (bounded)."""
        task = self._reloading.get(model.ref.key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._load(model))
            self._reloading[model.ref.key] = task
        try:
            await asyncio.wait_for(asyncio.shield(task), self._load_wait_s)
        except TimeoutError:
            wait = max(1, math.ceil(self._load_wait_s))
            raise ServiceUnavailable(
                f"model {model.ref.key} is loading; retry in {wait} s (this call was not "
                "charged)", code="backend_unavailable", headers={"Retry-After": str(wait)},
            ) from None

    async def _call(self, model: _Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._wire is not None
        if model.flat_in:
            inputs = {n: a.reshape(-1, 1) if n in model.flat_in else a
                      for n, a in inputs.items()}
        started = time.monotonic()
        try:
            result = await self._wire.infer(model.name, inputs, model.outputs)
        except TritonError as exc:
            raise _classify(exc.status, exc.message, model.ref.key) from exc
        except (TritonDown, OSError) as exc:  # refused, reset, timed out: the server went away
            log.warning("Triton call to %s failed after %.3f s: %r", model.ref.key,
                        time.monotonic() - started, exc)
            raise _unavailable("the Triton server is unavailable") from exc
        except TypeError as exc:  # a dtype Triton has no datatype for
            raise InvalidInput(f"the model refused the input: {exc}") from exc
        if model.col_out:
            for n in model.col_out:
                if n in result:
                    result[n] = result[n].reshape(-1)
        return result


def _rows(inputs: dict[str, np.ndarray]) -> int:
    """The call's rows when every input has the same leading dimension, else 0."""
    rows = {a.shape[0] if a.ndim else 0 for a in inputs.values()}
    return rows.pop() if len(rows) == 1 else 0


class _Lost(Exception):
    """Triton does not have the model loaded (restarted, evicted, or never loaded)."""


def _classify(status: int, message: str, key: str) -> Exception:
    lowered = message.lower()
    if "aimarket invalid input" in lowered:
        return InvalidInput(f"the model refused the input: {message.split(':', 1)[-1].strip()}")
    if "aimarket failed" in lowered:
        return InferenceFailed("inference failed")
    if ("unknown model" in lowered or "not ready" in lowered or "unavailable" in lowered
            or "not found" in lowered):
        return _Lost(message)
    if 400 <= status < 500:
        return InvalidInput(f"the model refused the input: {message}")
    return _unavailable(f"Triton failed the call to {key}")
