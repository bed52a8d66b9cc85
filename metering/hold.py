"""A reservation's whole life as one construct: reserve, run the block, commit or release.

    async with meter.hold(call, refuse=...) as res:
        outputs = await backend.infer(...)      # the work the caller is charged for

Entering reserves (a refusal raises the caller's error for it); leaving the block normally
commits the call as one usage event; leaving it by an exception releases the hold, so a failed
call is never charged. Any failure of the metering client itself — a Redis error, or the client
breaking while its pool is dropped — is a 503 ``metering_unavailable``, never a 500.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from serving.errors import AimarketError, MeteringUnavailable, ServiceUnavailable

from .metrics import RELEASED

if TYPE_CHECKING:
    from .calls import Reservation
    from .meter import Meter

COMMIT_RETRY_S = 10.0  # covers a Redis restart that reloads its append-only file
Refuse = Callable[["Reservation"], BaseException]


class Hold:
    """The async context manager ``Meter.hold`` returns (see the module docstring)."""

    def __init__(self, meter: Meter, reserve: Callable[[], Awaitable[Reservation]],
                 refuse: Refuse, *, started: float | None = None) -> None:
        self._meter = meter
        self._reserve = reserve
        self._refuse = refuse
        self._started = time.perf_counter() if started is None else started
        self.reservation: Reservation | None = None

    async def __aenter__(self) -> Reservation:
        try:
            res = await self._reserve()
        except AimarketError:
            raise
        except Exception as exc:
            raise MeteringUnavailable() from exc
        if not res.ok:
            raise self._refuse(res)
        self.reservation = res
        return res

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        res = self.reservation
        assert res is not None
        if exc is None:
            latency_us = int((time.perf_counter() - self._started) * 1e6)
            try:
                await self._commit(res, latency_us)
                return
            except AimarketError:
                await self._release(res)
                raise
            except BaseException as failure:
                await self._release(res)
                if isinstance(failure, Exception):
                    raise MeteringUnavailable() from failure
                raise
        await self._release(res)  # the block failed: its exception goes on unchanged

    async def _release(self, res: Reservation) -> None:
        try:
            if await self._meter.release(res):
                RELEASED.labels("failed").inc()
        except Exception:
            pass  # the flusher's sweep refunds the hold; the ledger never sees this call

    async def _commit(self, res: Reservation, latency_us: int) -> None:
        """Commit, retrying through a Redis restart so the answer matches the ledger.

        A commit whose reply was lost may or may not have run. Retrying is safe: the commit
        script deletes the hold and appends the event atomically, so a retry that finds no hold
        means the first attempt ran (holds are refunded only by release, never called before
        this returns, or by the sweep, which waits far longer than these retries). Only if
        Redis stays away past the deadline is the call answered 503 while its charge may
        stand; reconcile shows such calls.
        """
        if res.lease is not None:  # a lease's group commit retries its batch itself
            if await self._meter.commit(res, latency_us=latency_us):
                return
            raise ServiceUnavailable(
                "the call outlived its reservation and was not charged; retry it",
                code="reservation_expired",
            )
        deadline = time.monotonic() + COMMIT_RETRY_S
        retried = False
        while True:
            try:
                if await self._meter.commit(res, latency_us=latency_us) or retried:
                    return
                raise ServiceUnavailable(
                    "the call outlived its reservation and was not charged; retry it",
                    code="reservation_expired",
                )
            except AimarketError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                retried = True
                await asyncio.sleep(0.05)
