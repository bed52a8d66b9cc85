"""Dynamic batching for the local backend: concurrent calls to one model, one onnxruntime run.

A call joins a queue; a run takes the calls at the head of the queue whose tensors can be
stacked (same dtypes and the same shape past the leading batch dimension), up to
``max_rows`` rows in all, concatenates them, runs once on the thread pool and gives each
caller its own slice of every output. At most ``slots`` runs of one model are in flight, so
while they are, calls pile up and the next run takes many of them at once.

``wait_s`` (the listing's ``batch_wait_ms``) is how long a run that is not full yet may wait
for more calls, as Triton's ``max_queue_delay``. A call that finds no run of its model in
flight never waits: a lone caller pays no batching delay.

``run`` is a blocking function run on ``pool`` (onnxruntime in this process), or, with no
pool, a coroutine function awaited on the loop (a remote engine: the triton backend).

If a batched run fails, its calls run again one by one, so one caller's bad input (an
out-of-range index, say) fails that caller alone.

``adaptive`` (the automatic batching of a listing that did not ask for it) keeps batching only
while it pays: the batcher keeps the time per row of single-row runs and of batched runs
(moving averages of their wall time on the pool) and starts stacking calls when a batched row
costs less than ``GAIN`` x a single one, stops when it costs as much; every ``PROBE_EVERY``
runs it tries the other way again (a wrong probe costs one slow run in 128), as load and
neighbours change. On a CPU a large convolutional batch often runs slower per image than one
image at a time (its activations leave the cache); on a GPU it is the other way round.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], Sequence[np.ndarray]]
AsyncRun = Callable[[Feeds], Awaitable[Sequence[np.ndarray]]]
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]
GAIN = 0.9  # adaptive: a batched row must cost < 90% of a single one to keep batching
PROBE_EVERY = 128  # adaptive: one run in this many tries the way not taken
_ALPHA = 0.2  # weight of the newest run in the moving averages


def signature(inputs: Feeds) -> Signature:
    """What must agree between calls stacked in one run: names, dtypes, trailing shapes."""
    return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()))


@dataclass
class BatchStats:
    """Counters a test or an operator reads: how calls were coalesced."""

    calls: int = 0  # calls answered through the batcher
    runs: int = 0  # onnxruntime runs made for them (batched or single)
    batched_runs: int = 0  # runs that served more than one call
    largest_rows: int = 0  # the most rows one run carried
    fallbacks: int = 0  # batched runs that failed and were rerun call by call
    single_row_s: float | None = None  # moving average of a row's time in single-row runs
    batched_row_s: float | None = None  # ... and in runs of several rows


@dataclass
class _Call:
    inputs: Feeds
    rows: int
    sig: Signature
    future: asyncio.Future[Sequence[np.ndarray]]
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Coalesces the concurrent calls of one model into runs of at most ``max_rows`` rows."""

    def __init__(self, run: Run | AsyncRun, pool: Executor | None, *, max_rows: int,
                 wait_s: float, slots: int, adaptive: bool = False) -> None:
        self._run = run
        self._pool = pool
        self.max_rows = max(1, max_rows)
        self.wait_s = max(0.0, wait_s)
        self._slots = max(1, slots)
        self.adaptive = adaptive
        self._stacking = False  # adaptive: whether batching pays, as last measured
        self._queue: deque[_Call] = deque()
        self._busy = 0
        self._timer: asyncio.TimerHandle | None = None
        self.stats = BatchStats()

    def configure(self, *, max_rows: int, wait_s: float, adaptive: bool,
                  slots: int | None = None) -> None:
        """New limits from changed serving options; they apply to the next run."""
        self.max_rows, self.wait_s = max(1, max_rows), max(0.0, wait_s)
        self.adaptive = adaptive
        if slots is not None:
            self._slots = max(1, slots)

    def limit(self) -> int:
        """The most rows the next run may take."""
        if not self.adaptive:
            return self.max_rows
        single, batched = self.stats.single_row_s, self.stats.batched_row_s
        if single is None or batched is None:  # learn both first
            return 1 if single is None and self.stats.runs % 2 else self.max_rows
        # hysteresis: start stacking below GAIN x a single row, stop at no gain at all, so
        # noise around the line does not flip it run by run
        self._stacking = batched < single * (1.0 if self._stacking else GAIN)
        probe = self.stats.runs % PROBE_EVERY == 0
        return (1 if probe else self.max_rows) if self._stacking else \
            (self.max_rows if probe else 1)

    def learn(self, rows: int, seconds: float) -> None:
        """Record one run's wall time on the pool."""
        per_row = seconds / max(rows, 1)
        name = "single_row_s" if rows == 1 else "batched_row_s"
        old = getattr(self.stats, name)
        setattr(self.stats, name, per_row if old is None else old + _ALPHA * (per_row - old))

    async def submit(self, inputs: Feeds, rows: int) -> Sequence[np.ndarray]:
        """The outputs of this call alone (``rows`` is its leading dimension)."""
        loop = asyncio.get_running_loop()
        call = _Call(inputs, rows, signature(inputs), loop.create_future())
        self._queue.append(call)
        self._dispatch()
        return await call.future

    def _dispatch(self) -> None:
        while self._busy < self._slots and self._queue:
            head = self._queue[0]
            limit = self.limit()
            batch = self._take(head, limit)
            rows = sum(c.rows for c in batch)
            waited = time.monotonic() - head.arrived
            if rows < limit and self._busy > 0 and waited < self.wait_s:
                self._wake_in(self.wait_s - waited)
                return
            taken = {id(c) for c in batch}
            self._queue = deque(c for c in self._queue if id(c) not in taken)
            self._busy += 1
            asyncio.get_running_loop().create_task(self._serve(batch))

    def _take(self, head: _Call, limit: int) -> list[_Call]:
        """The calls of the next run: the head and those after it that stack with it."""
        batch, rows = [head], head.rows
        for call in list(self._queue)[1:]:
            if rows >= limit:
                break
            if call.sig == head.sig and rows + call.rows <= limit:
                batch.append(call)
                rows += call.rows
        return batch

    def _wake_in(self, delay: float) -> None:
        if self._timer is None:
            def wake() -> None:
                self._timer = None
                self._dispatch()

            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), wake)

    async def _serve(self, batch: list[_Call]) -> None:
        loop = asyncio.get_running_loop()
        try:
            live = [c for c in batch if not c.future.done()]  # a cancelled caller is skipped
            if len(live) == 1:
                await self._single(live[0])
            elif live:
                await self._batched(live)
            self.stats.calls += len(live)
        finally:
            self._busy -= 1
            loop.call_soon(self._dispatch)

    async def _exec(self, feeds: Feeds) -> Sequence[np.ndarray]:
        if self._pool is None:
            return await self._run(feeds)  # type: ignore[misc]
        out = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, feeds)
        return out  # type: ignore[return-value]

    async def _single(self, call: _Call) -> None:
        self.stats.runs += 1
        self.stats.largest_rows = max(self.stats.largest_rows, call.rows)
        began = time.perf_counter()
        try:
            out = await self._exec(call.inputs)
        except Exception as exc:
            _settle(call, exc)
        else:
            self.learn(call.rows, time.perf_counter() - began)
            _settle(call, out)

    async def _batched(self, batch: list[_Call]) -> None:
        total = sum(c.rows for c in batch)
        feeds = {n: np.concatenate([c.inputs[n] for c in batch]) for n in batch[0].inputs}
        self.stats.runs += 1
        self.stats.batched_runs += 1
        self.stats.largest_rows = max(self.stats.largest_rows, total)
        began = time.perf_counter()
        try:
            outs = await self._exec(feeds)
            self.learn(total, time.perf_counter() - began)
            if any(o.ndim == 0 or o.shape[0] != total for o in outs):
                raise ValueError("an output has no batch dimension matching the inputs")
        except Exception:
            # Someone's input broke the run (or the outputs do not split): each call alone,
            # so only the caller at fault gets the error.
            self.stats.fallbacks += 1
            for call in batch:
                await self._single(call)
            return
        start = 0
        for call in batch:
            end = start + call.rows
            _settle(call, [o[start:end] for o in outs])
            start = end


def _settle(call: _Call, result: Sequence[np.ndarray] | BaseException) -> None:
    if call.future.done():
        return
    if isinstance(result, BaseException):
        call.future.set_exception(result)
    else:
        call.future.set_result(result)
