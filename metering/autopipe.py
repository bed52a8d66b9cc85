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
from hiredis import pack_command
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

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
        # redis-py's pipeline packs arguments in pure Python (~2 µs each); hiredis packs the
        # whole batch in C, and redis-py's connection still does the I/O and the parsing.
        pool = self._client.connection_pool
        try:
            conn = await pool.get_connection()
        except BaseException as exc:
            self._fail(batch, exc)
            raise_if_cancelled(exc)
            return
        answered = 0
        try:
            await conn.send_packed_command(
                b"".join(pack_command(args) for args, _ in batch), check_health=False
            )
            for _, fut in batch:
                try:
                    result: Any = await conn.read_response()
                except ResponseError as exc:  # an error reply concerns its command only
                    result = exc
                answered += 1
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        except BaseException as exc:  # the connection failed: every caller left gets the error
            self._fail(batch[answered:], exc)
            with contextlib.suppress(Exception):
                await conn.disconnect()
                # After a Redis restart every pooled connection is dead: drop them all so the
                # next calls reconnect instead of failing one stale socket at a time.
                await pool.disconnect()
            raise_if_cancelled(exc)
        finally:
            await pool.release(conn)

    @staticmethod
    def _fail(items: list[_Item], exc: BaseException) -> None:
        err = exc if isinstance(exc, Exception) else RedisConnectionError("redis call cancelled")
        for _, fut in items:
            if not fut.done():
                fut.set_exception(err)


def raise_if_cancelled(exc: BaseException) -> None:
    if not isinstance(exc, Exception):
        raise exc
