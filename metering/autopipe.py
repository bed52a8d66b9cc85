"""Automatic pipelining: Redis commands issued by concurrent calls in the same event-loop tick
travel together as one pipeline, in one round trip.

Under load this is the group commit of the paid path: one write and one read on the socket
for many calls, and one ``appendfsync always`` fsync in the server for all of them, instead of
one of each per command. Each command keeps its own result or error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

_Item = tuple[tuple[Any, ...], asyncio.Future[Any]]


class AutoPipeline:
    def __init__(self, client: Any, *, max_batch: int = 512) -> None:
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

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command now, with the commands queued so far in this tick: no coroutine
        and no wait for the next tick (for a caller that is itself the end of a tick's
        gathering: the leases' group commit). The future has its result or error."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((args, fut))
        self._flush()
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[_Item]) -> None:
        client: aioredis.Redis = self._client
        # redis-py's pipeline packs arguments in pure Python (~2 µs each); hiredis packs the
        # whole batch in C, and redis-py's connection still does the I/O and the parsing.
        pool = client.connection_pool
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


class ClusterAutoPipeline(AutoPipeline):
    """The auto-pipeline on a Redis Cluster: a tick's commands go to the primary that owns the
    slot of each one's first key, one pipeline (one round trip) per primary, all primaries at
    once. Commands are ``EVALSHA sha numkeys key ...`` (every script's keys share one slot).

    Nothing is sent twice on a connection failure (a command that may have run is not
    retried: the caller gets the error). A MOVED or ASK reply means the command did not run
    there; the cluster client then sends it where the slot now lives.
    """

    def __init__(self, client: RedisCluster, *, max_batch: int = 512) -> None:
        super().__init__(client, max_batch=max_batch)
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    async def _send(self, batch: list[_Item]) -> None:
        client: RedisCluster = self._client
        groups: dict[ClusterNode, list[_Item]] = {}
        try:
            await client.initialize()  # reads the slot map once (or after a refresh)
            for item in batch:
                node = client.get_node_from_key(item[0][3])
                assert node is not None
                groups.setdefault(node, []).append(item)
        except BaseException as exc:
            self._fail(batch, exc)
            raise_if_cancelled(exc)
            return
        await asyncio.gather(*(self._send_node(node, items) for node, items in groups.items()))

    async def _send_node(self, node: ClusterNode, items: list[_Item]) -> None:
        try:
            conn = node.acquire_connection()
        except BaseException as exc:
            self._fail(items, exc)
            raise_if_cancelled(exc)
            return
        answered = 0
        moved: list[_Item] = []
        try:
            await conn.send_packed_command(
                b"".join(pack_command(args) for args, _ in items), check_health=False)
            for item in items:
                try:
                    result: Any = await conn.read_response()
                except (MovedError, AskError):  # it did not run: the slot lives elsewhere
                    answered += 1
                    moved.append(item)
                    continue
                except ResponseError as exc:
                    result = exc
                answered += 1
                fut = item[1]
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        except BaseException as exc:
            self._fail(items[answered:], exc)
            with contextlib.suppress(Exception):
                await conn.disconnect()
                await node.disconnect_free_connections()  # a restarted node: all are stale
            self._refresh()
            if not isinstance(exc, Exception):
                self._fail(moved, exc)  # cancelled: the redirected ones are not sent either
            raise_if_cancelled(exc)
        finally:
            node.release(conn)
        for args, fut in moved:  # the cluster client follows the redirection
            try:
                result = await self._client.execute_command(*args)
            except Exception as exc:
                result = exc
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def _refresh(self) -> None:
        """Re-read the slot map in the background (a primary failed: a replica may take its
        slots), at most once a second."""
        now = time.monotonic()
        if (self._refreshing is not None and not self._refreshing.done()) \
                or now - self._refreshed_at < 1.0:
            return
        self._refreshed_at = now

        async def refresh() -> None:
            with contextlib.suppress(Exception):
                await self._client.nodes_manager.initialize()

        self._refreshing = asyncio.ensure_future(refresh())


def raise_if_cancelled(exc: BaseException) -> None:
    if not isinstance(exc, Exception):
        raise exc
