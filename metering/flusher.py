"""Moves usage events from the Redis stream into the SQL ledger, exactly once.

A consumer group tracks delivery: an event is acknowledged (and deleted) only after the ledger
transaction that holds it committed, and the event id is the ledger's primary key, so a crash
between the two re-delivers an event that the ledger then ignores. Events left pending by a
dead flusher are claimed after ``claim_idle_ms``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from redis.cluster import RedisCluster
from sqlalchemy import Engine

from . import metrics, scripts
from .bulk import payloads
from .keys import Keys
from .ledger import write_encoded

log = logging.getLogger(__name__)
Batch = dict[str, list[Any]]  # stream -> its messages read, each (id, fields)


class Flusher:
    """Flushes every shard's usage stream (keys.py); on a Redis Cluster each shard is read on
    its own (a command touches one slot), and a shard whose primary is away is skipped while
    the others go on."""

    def __init__(
        self, client: redis.Redis | RedisCluster, engine: Engine, *, namespace: str = "am:",
        group: str = "ledger", consumer: str | None = None, batch: int = 10_000,
        claim_idle_ms: int = 30_000, hold_timeout_s: float = 120.0,
    ) -> None:
        self.redis = client
        self.engine = engine
        names = Keys(namespace)
        self.streams = names.streams
        self.cluster = isinstance(client, RedisCluster)
        # XREADGROUP replies as the server sent them (one server): redis-py's parser builds a
        # dict per message, a third of a flush's time; payloads() reads the field list itself
        self._read: redis.Redis | RedisCluster = client
        if not isinstance(client, RedisCluster):
            raw = redis.Redis(connection_pool=client.connection_pool)
            raw.set_response_callback("XREADGROUP", _as_sent)
            self._read = raw
        self.hold_sets = names.hold_sets + ([] if self.cluster else [names.legacy_holds])
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.hold_timeout_s = hold_timeout_s
        self.flushed_key = names.flushed
        self._sweep = client.register_script(scripts.SWEEP)
        self._last_sweep = 0.0
        self._ready: set[str] = set()  # streams whose consumer group exists
        self._down_until: dict[str, float] = {}  # cluster: a shard whose primary failed

    def _ensure_group(self, stream: str) -> None:
        if stream in self._ready:
            return
        try:
            self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready.add(stream)

    def flush_once(self, block_ms: int | None = None) -> int:
        """Flush one batch per stream: this consumer's pending, then stale claims, then new
        events."""
        if not self.cluster:
            return self._flush_together(block_ms)
        written, failure = 0, None
        for stream in self.streams:
            if self._down_until.get(stream, 0.0) > time.monotonic():
                continue
            try:
                written += self._flush_stream(stream)
            except redis.RedisError as exc:  # that shard's primary is away: the others go on
                self._down_until[stream] = time.monotonic() + 1.0
                failure = exc
        if failure is not None:
            raise failure
        if not written and block_ms:  # no one command can block on every shard's stream
            time.sleep(block_ms / 1000)
        return written

    def _flush_stream(self, stream: str) -> int:
        self._ensure_group(stream)
        written = self._process(_messages(self.redis.xreadgroup(
            self.group, self.consumer, {stream: "0"}, count=self.batch)))
        written += self._process(self._claim(stream))
        written += self._process(_messages(self.redis.xreadgroup(
            self.group, self.consumer, {stream: ">"}, count=self.batch)))
        return written

    def _flush_together(self, block_ms: int | None) -> int:
        """One server: each step reads every stream in one command."""
        for stream in self.streams:
            self._ensure_group(stream)
        written = self._process(_messages(self._read.xreadgroup(
            self.group, self.consumer, dict.fromkeys(self.streams, "0"), count=self.batch)))
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms, "0-0",
                            count=self.batch)
        for stream, reply in zip(self.streams, pipe.execute(), strict=True):
            claimed = reply[1] if len(reply) > 1 else []
            written += self._process(_live(stream, claimed))
        new = self._read.xreadgroup(self.group, self.consumer, dict.fromkeys(self.streams, ">"),
                                    count=self.batch, block=block_ms)
        return written + self._process(_messages(new))

    def _claim(self, stream: str) -> Batch:
        reply = self.redis.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms,
                                      "0-0", count=self.batch)
        return _live(stream, reply[1] if len(reply) > 1 else [])

    def sweep(self) -> int:
        """Refund holds older than ``hold_timeout_s``: calls whose worker died mid-call."""
        cutoff = int((time.time() - self.hold_timeout_s) * 1000)
        n, failure = 0, None
        for holds, holdq in self.hold_sets:
            try:
                n += int(self._sweep([holds, holdq], [cutoff, 500]))
            except redis.RedisError as exc:  # a shard away: swept when it is back
                failure = exc
        if n:
            metrics.RELEASED.labels("swept").inc(n)
            log.warning("refunded %d reservations of calls that never finished", n)
        if failure is not None:
            raise failure
        return n

    def drain(self) -> int:
        """Flush until the streams hold nothing for this group; returns events written."""
        self._down_until.clear()
        total = 0
        while True:
            n = self.flush_once()
            total += n
            if n == 0 and not self.lag():
                return total

    def lag(self) -> int:
        """Events in the streams not yet in the ledger."""
        for stream in self.streams:
            self._ensure_group(stream)
        return sum(int(self.redis.xlen(stream)) for stream in self.streams)

    def _process(self, batch: Batch) -> int:
        if not batch:
            return 0
        new = write_encoded(self.engine, payloads(m for msgs in batch.values() for m in msgs))
        pipe = self.redis.pipeline(transaction=False)
        for stream, msgs in batch.items():
            ids = [m[0] for m in msgs]
            pipe.xack(stream, self.group, *ids)
            pipe.xdel(stream, *ids)
        pipe.incrby(self.flushed_key, new)
        pipe.execute()
        return sum(len(msgs) for msgs in batch.values())

    def run(self, stop: threading.Event, *, block_ms: int = 250, gather_ms: int = 0) -> None:
        """Flush until ``stop`` is set; errors are logged and retried with backoff. A batch
        smaller than ``batch`` is followed by a pause that makes the cycle ``gather_ms``
        long: under steady traffic events gather into one ledger transaction per cycle
        instead of one per few events (a transaction's fixed cost dominates small ones)."""
        backoff = 0.1
        while not stop.is_set():
            try:
                started = time.monotonic()
                if self.flush_once(block_ms=block_ms) < self.batch and gather_ms > 0:
                    stop.wait(max(0.0, gather_ms / 1000 - (time.monotonic() - started)))
                if time.monotonic() - self._last_sweep > 1.0:
                    self._last_sweep = time.monotonic()
                    self.sweep()
                backoff = 0.1
            except Exception:  # Redis or the database is down: keep the events, retry
                log.exception("ledger flush failed; retrying in %.1fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)


def _as_sent(response: Any, **_options: Any) -> Any:
    return response


def _messages(reply: Any) -> Batch:
    """The messages of an XREADGROUP reply (RESP2 list or RESP3 map) by stream, parsed (fields
    a dict) or as sent (fields a flat list of names and values)."""
    out: Batch = {}
    items = reply.items() if isinstance(reply, dict) else (reply or [])
    for stream, msgs in items:
        name = stream.decode() if isinstance(stream, bytes) else stream
        out.update(_live(name, msgs))
    return out


def _live(stream: str, msgs: list[Any]) -> Batch:
    """``stream``'s messages that still have their fields (a deleted one has none)."""
    live = [m for m in msgs if m[1]]
    return {stream: live} if live else {}
