"""The ``local`` backend: onnxruntime sessions of live versions, in this process.

Deployed versions are known; a known version is loaded (resident) while the memory budget
allows and otherwise loaded on its next call, which waits for the load (at most
``load_wait_s``, else 503 ``backend_unavailable`` with Retry-After). Beyond the budget the least
recently used sessions are dropped (``serving.residency``). Concurrent calls of a model that
has a leading batch dimension may be coalesced into one run (``serving.batching``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from .backend import ModelRef
from .batching import Batcher, BatchStats
from .errors import InferenceFailed, InvalidInput, NotFound, ServiceUnavailable
from .residency import Residency, resident_cost
from .runtime import new_session

# Automatic batching (serving option batching "auto", max_batch_size left at 1) for models
# measured at review at least this slow per batch-1 call: below it the per-call work of the
# gateway (auth, metering, JSON) dwarfs the model and stacking tensors only adds to it. It is
# adaptive (serving.batching): kept only while a batched row costs less than a single one.
AUTO_BATCH_MIN_US = 500
AUTO_BATCH_ROWS = 8

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(bool)": "bool",
}

InputSpec = dict[str, tuple[np.dtype, list[int | None]]]


def batch_rows(ref: ModelRef) -> int:
    """How many rows one batched run of ``ref`` may carry; 0: batching off for it."""
    opts = ref.serving
    if getattr(opts, "batching", "auto") == "off":
        return 0
    if opts.max_batch_size > 1:
        return opts.max_batch_size
    return AUTO_BATCH_ROWS if ref.latency_us >= AUTO_BATCH_MIN_US else 0


def _input_spec(session: ort.InferenceSession) -> InputSpec | None:
    """Input dtypes and shapes (None: dynamic) when every input and output has a leading
    batch dimension, else None (such a model is never batched)."""
    spec: InputSpec = {}
    for node in [*session.get_inputs(), *session.get_outputs()]:
        if not node.shape or isinstance(node.shape[0], int):
            return None
    for node in session.get_inputs():
        dtype = _ORT_DTYPES.get(node.type)
        if dtype is None:
            return None
        spec[node.name] = (np.dtype(dtype),
                           [d if isinstance(d, int) else None for d in node.shape])
    return spec


def _check(spec: InputSpec, inputs: dict[str, np.ndarray]) -> int:
    """The call's rows, or InvalidInput for tensors the model cannot take (before they join
    anyone else's run)."""
    if set(inputs) != set(spec):
        raise InvalidInput(f"the model takes inputs {sorted(spec)}, got {sorted(inputs)}")
    rows = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    for name, arr in inputs.items():
        dtype, shape = spec[name]
        if arr.dtype != dtype:
            raise InvalidInput(f"input '{name}' must be {dtype}, got {arr.dtype}")
        if arr.ndim != len(shape) or any(d is not None and d != g
                                         for d, g in zip(shape, arr.shape, strict=True)):
            raise InvalidInput(f"input '{name}' has shape {list(arr.shape)}; the model takes "
                               f"{['?' if d is None else d for d in shape]}")
    if len(rows) != 1 or min(rows) < 1:
        raise InvalidInput("every input must have the same, non-zero batch dimension")
    return rows.pop()


class _Loaded:
    __slots__ = ("session", "output_names", "inline", "spec", "batcher")

    def __init__(self, session: ort.InferenceSession, inline: bool) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self.inline = inline
        self.spec = _input_spec(session)
        self.batcher: Batcher | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        return self.session.run(None, feeds)


def _runner(session: ort.InferenceSession) -> Callable[[dict[str, np.ndarray]],
                                                      Sequence[np.ndarray]]:
    """``session.run`` for the batcher; holding the session alone (not the _Loaded that holds
    the batcher) leaves no reference cycle, so an evicted session is freed at once."""
    return partial(session.run, None)


def _trim() -> None:
    """Hand freed heap back to the system after an eviction (glibc keeps it otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class LocalBackend:
    """Runs models in-process; inference happens on a small thread pool, off the event loop."""

    name = "local"

    def __init__(self, *, threads: int | None = None, inline_us: int = 0,
                 memory_budget: int | None = None, load_wait_s: float = 30.0) -> None:
        """``inline_us``: models measured faster than this many microseconds per batch-1 call
        run on the event loop itself; a thread hop costs more than such a model.
        ``memory_budget``: bytes of loaded sessions to keep at most (None: no limit)."""
        self._refs: dict[str, ModelRef] = {}
        self._models: dict[str, _Loaded] = {}
        self._loads: dict[str, asyncio.Task[_Loaded]] = {}
        self._cold_ms: dict[str, float] = {}
        self._residency = Residency(memory_budget)
        self._inline_us = inline_us
        self._load_wait_s = load_wait_s
        self._threads = threads or os.cpu_count() or 2
        # onnxruntime releases the GIL while it runs, so threads give real parallelism.
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="ort")

    async def start(self) -> None:
        return None

    async def deploy(self, ref: ModelRef) -> None:
        """Know ``ref``; a version new here is loaded now (a deploy verifies that the model
        loads), evicting the least recently used beyond the budget. Deploying a known version
        applies its serving options and loads nothing: an unloaded one loads on its call."""
        known = ref.key in self._refs
        self._refs[ref.key] = ref
        loaded = self._models.get(ref.key)
        if loaded is not None:
            self._configure(loaded, ref)
        elif not known or ref.key in self._loads:
            await self._ensure(ref.key)

    async def load(self, key: str) -> None:
        """Load a known version now (waits for a load in progress)."""
        if key not in self._refs:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        await self._ensure(key)

    def has_room(self, ref: ModelRef) -> bool:
        """Whether ``ref`` would load without evicting anything (the preload at start)."""
        return ref.key in self._models or self._residency.fits(resident_cost(ref.path))

    async def undeploy(self, key: str) -> None:
        self._refs.pop(key, None)
        self._models.pop(key, None)
        self._residency.drop(key)

    def is_deployed(self, key: str) -> bool:
        """Known and servable: loaded now, or loaded by its next call."""
        return key in self._refs

    def is_resident(self, key: str) -> bool:
        return key in self._models

    def resident_bytes(self) -> int:
        """The estimated memory of the loaded sessions (``serving.residency``)."""
        return self._residency.used

    def cold_start_ms(self, key: str) -> float | None:
        """How long the last load of ``key`` took in this process, if it was loaded."""
        return self._cold_ms.get(key)

    def batch_stats(self, key: str) -> BatchStats | None:
        """How calls of ``key`` were coalesced in this process; None: it is not batched."""
        loaded = self._models.get(key)
        return None if loaded is None or loaded.batcher is None else loaded.batcher.stats

    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = self._models.get(key)
        if loaded is None:
            loaded = await self._cold(key)
        else:
            self._residency.touch(key)
        try:
            if loaded.batcher is not None and loaded.spec is not None:
                rows = _check(loaded.spec, inputs)
                results = await loaded.batcher.submit(inputs, rows)
            elif loaded.inline:
                results = loaded.run(inputs)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._pool, loaded.run, inputs)
        except InvalidInput:
            raise
        except InvalidArgument as exc:
            raise InvalidInput(f"the model refused the input: {exc}") from exc
        except Exception as exc:
            raise InferenceFailed(f"inference failed: {type(exc).__name__}") from exc
        return dict(zip(loaded.output_names, results, strict=True))

    async def _cold(self, key: str) -> _Loaded:
        """A known model that is not loaded: load it, waiting at most ``load_wait_s``."""
        if key not in self._refs:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        try:
            return await asyncio.wait_for(self._ensure(key), self._load_wait_s)
        except TimeoutError:
            wait = max(1, math.ceil(self._load_wait_s))
            raise ServiceUnavailable(
                f"model {key} is loading; retry in {wait} s (this call was not charged)",
                code="backend_unavailable", headers={"Retry-After": str(wait)},
            ) from None
        except (OSError, InvalidArgument) as exc:
            raise InferenceFailed(f"model {key} could not be loaded: {type(exc).__name__}"
                                  ) from exc

    async def _ensure(self, key: str) -> _Loaded:
        loaded = self._models.get(key)
        if loaded is not None:
            return loaded
        task = self._loads.get(key)
        if task is None:  # one load per model, however many callers wait for it
            task = asyncio.get_running_loop().create_task(self._load(self._refs[key]))
            self._loads[key] = task
            task.add_done_callback(lambda t: self._loads.pop(key, None) if
                                   self._loads.get(key) is t else None)
        return await asyncio.shield(task)

    async def _load(self, ref: ModelRef) -> _Loaded:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        session = await loop.run_in_executor(self._pool, new_session, str(ref.path))
        loaded = _Loaded(session, 0 < ref.latency_us <= self._inline_us)
        self._cold_ms[ref.key] = (time.perf_counter() - began) * 1000
        current = self._refs.get(ref.key, ref)
        self._configure(loaded, current)
        if ref.key in self._refs:  # not undeployed while it loaded
            self._models[ref.key] = loaded
            evicted = [self._models.pop(k, None)
                       for k in self._residency.admit(ref.key, resident_cost(ref.path))]
            if evicted:
                del evicted  # the last references: the sessions go now, then their memory
                loop.run_in_executor(self._pool, _trim)
        return loaded

    def _configure(self, loaded: _Loaded, ref: ModelRef) -> None:
        """Batching as the serving options and the model allow."""
        rows = batch_rows(ref) if loaded.spec is not None else 0
        wait_s = ref.serving.batch_wait_ms / 1000
        adaptive = ref.serving.max_batch_size <= 1  # automatic: kept only while it pays
        if rows <= 1:
            loaded.batcher = None
        elif loaded.batcher is None:
            loaded.batcher = Batcher(_runner(loaded.session), self._pool, max_rows=rows,
                                     wait_s=wait_s, slots=self._threads, adaptive=adaptive)
        else:
            loaded.batcher.configure(max_rows=rows, wait_s=wait_s, adaptive=adaptive)

    async def close(self) -> None:
        for task in self._loads.values():
            task.cancel()
        self._models.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
