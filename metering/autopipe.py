"""Automatic pipelining: Redis commands issued by concurrent calls in the same event-loop tick
travel together as one pipeline, in one round trip.

Under load this is the group commit of the paid path: one write and one read on the socket
for many calls, and one ``appendfsync always`` fsync in the server for all of them, instead of
one of each per command. Each command keeps its own result or error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

_Item = tuple[tuple[Any, ...], asyncio.Future[Any]]


class AutoPipeline:
    def __init__(self, client: aioredis.Redis, *, max_batch: int = 512) -> None:
        self._client = client
        self._max_batch = max_batch
        self._pending: list[_Item] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        """Run one command (``"EVALSHA", sha, ...``) as part of the next batch."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, fut))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[_Item]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else
                                      RedisConnectionError("redis pipeline cancelled"))
            if not isinstance(exc, Exception):
                raise
            # Drop every pooled connection: after a Redis restart they are all dead, and the
            # next calls should reconnect rather than fail one stale socket at a time.
            with contextlib.suppress(Exception):
                await self._client.connection_pool.disconnect()
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)
