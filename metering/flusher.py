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
from sqlalchemy import Engine

from . import metrics, scripts
from .bulk import payloads
from .keys import Keys
from .ledger import write_encoded

log = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self, client: redis.Redis, engine: Engine, *, namespace: str = "am:",
        group: str = "ledger", consumer: str | None = None, batch: int = 10_000,
        claim_idle_ms: int = 30_000, hold_timeout_s: float = 120.0,
    ) -> None:
        self.redis = client
        self.engine = engine
        names = Keys(namespace)
        self.stream = names.stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.hold_timeout_s = hold_timeout_s
        self.holds, self.holdq, self.flushed_key = names.holds, names.holdq, names.flushed
        self._sweep = client.register_script(scripts.SWEEP)
        self._last_sweep = 0.0
        self._group_ready = False

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def flush_once(self, block_ms: int | None = None) -> int:
        """Flush one batch: this consumer's pending, then stale claims, then new events."""
        self._ensure_group()
        written = 0
        mine = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: "0"}, count=self.batch
        )
        written += self._process(_messages(mine))
        reply = self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
        )
        claimed = reply[1] if len(reply) > 1 else []
        written += self._process([(mid, f) for mid, f in claimed if f])
        new = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms
        )
        written += self._process(_messages(new))
        return written

    def sweep(self) -> int:
        """Refund holds older than ``hold_timeout_s``: calls whose worker died mid-call."""
        cutoff = int((time.time() - self.hold_timeout_s) * 1000)
        n = int(self._sweep([self.holds, self.holdq], [cutoff, 500]))
        if n:
            metrics.RELEASED.labels("swept").inc(n)
            log.warning("refunded %d reservations of calls that never finished", n)
        return n

    def drain(self) -> int:
        """Flush until the stream holds nothing for this group; returns events written."""
        total = 0
        while True:
            n = self.flush_once()
            total += n
            if n == 0 and not self.lag():
                return total

    def lag(self) -> int:
        """Events in the stream not yet in the ledger."""
        self._ensure_group()
        return int(self.redis.xlen(self.stream))

    def _process(self, messages: list[tuple[Any, dict[Any, Any]]]) -> int:
        if not messages:
            return 0
        new = write_encoded(self.engine, payloads(messages))
        ids = [mid for mid, _ in messages]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.incrby(self.flushed_key, new)
        pipe.execute()
        return len(messages)

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
                    self.sweep()
                    self._last_sweep = time.monotonic()
                backoff = 0.1
            except Exception:  # Redis or the database is down: keep the events, retry
                log.exception("ledger flush failed; retrying in %.1fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)


def _messages(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    out: list[tuple[Any, dict[Any, Any]]] = []
    for _stream, msgs in reply or []:
        out.extend((mid, fields) for mid, fields in msgs if fields)
    return out
