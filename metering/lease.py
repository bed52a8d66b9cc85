"""Leases: paid calls decided in the process, their usage events committed in groups.

A lease is a slice of one API key's paid calls on one listing at one price, taken from Redis
in one atomic step (the LEASE script): the calls' price off the account's credit, onto the
key's spend counters, and as many tokens off its rate buckets. Calls then spend the slice in
the process with no round trip; a call that fails gives its call back to the slice. The
usage events of the calls that succeed are committed in groups (COMMIT_LEASED: one stream
entry per lease and batch, the price taken off the lease's rest, one round trip shared by all
the calls in the batch); a call is answered only after its group committed.

Every guarantee of the per-call reservation holds:
- the lease is a hold whose price is its unspent rest: credit is never below zero (or the
  credit line) and never more is spent than was held; spend caps are counted when leased;
- rate limits: a lease takes tokens that were free when it was taken, so across processes a
  bucket is never exceeded by more than the calls leased and not yet spent (at most a burst);
- trial calls are never leased (LEASE refuses while one is left: the call reserves it);
- a process that dies holding leases: the sweeper refunds their rest after the hold timeout,
  and reconcile counts a lease's rest as held; leases idle or older than ``max_age_s`` are
  given back at once.
A buyer whose credit sits in another process's lease may be refused until that lease goes
back (at most ``max_age_s``); a trial call given back by another process's failed call is
found by this process's next lease (at most ``max_age_s`` later).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .calls import PAID, CallSpec, Reservation
from .keys import Keys
from .money import split

Script = Callable[[str, list[str], list[object]], Awaitable[Any]]
Submit = Callable[[str, list[str], list[object]], "asyncio.Future[Any]"]  # sent at once
Slot = tuple[int, int, int, int]  # key id, listing id, price, account id
COMMIT_RETRY_S = 10.0  # the same patience as a reservation's commit (hold.py)


@dataclass(eq=False)
class Lease:
    id: str
    account_id: int
    price: int
    left: int  # calls this process may still decide
    credits_after: int  # the account's credit after the lease was taken
    rate_limit: int
    rate_left: int
    rate_reset_ms: int
    taken_at: float
    used_at: float = 0.0
    inflight: int = 0  # decided, not yet committed or given back
    gone: bool = False  # released or swept: its calls cannot be committed


@dataclass(eq=False)
class _Pending:
    lease: Lease
    line: str
    done: asyncio.Future[bool] = field(repr=False)


@dataclass(eq=False)
class _Group:
    """One shard's group commit: its calls by lease and the COMMIT_LEASED it sends."""

    by_lease: dict[Lease, list[_Pending]]
    keys: list[str]
    args: list[object]
    deadline: float

    def settle(self, outcome: list[Any]) -> None:
        for (lease, calls), ok in zip(self.by_lease.items(), outcome, strict=True):
            if not int(ok):
                lease.gone = True
            for p in calls:
                if not p.done.done():
                    p.done.set_result(bool(int(ok)))

    def fail(self, exc: BaseException) -> None:
        for calls in self.by_lease.values():
            for p in calls:
                if not p.done.done():
                    p.done.set_exception(exc)


class Leases:
    """The process's leases, keyed by (key, listing, price, account)."""

    def __init__(self, script: Script, submit: Submit, names: Keys, *, fee_bps: int,
                 day_month: Callable[[], tuple[str, str]], calls: int = 256,
                 max_age_s: float = 2.0, idle_s: float = 0.5) -> None:
        self._script = script  # a retried group commit, leases taken and given back
        self._submit = submit  # a group commit's first try, sent in the tick that gathered it
        self._sending: set[asyncio.Future[Any]] = set()
        self._names = names
        self._fee_bps = fee_bps
        self._day_month = day_month
        self._max_calls = calls
        self.max_age_s = max_age_s
        self.idle_s = idle_s
        self._book: dict[Slot, Lease] = {}
        self._retired: list[Lease] = []
        self._size: dict[Slot, int] = {}
        self._taking: dict[Slot, asyncio.Future[Lease | None]] = {}
        self._skip_until: dict[Slot, float] = {}
        self._queue: list[_Pending] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._prefix = os.urandom(6).hex()
        self._seq = 0

    # -- deciding ------------------------------------------------------------------------------
    async def reserve(self, call: CallSpec) -> Reservation | None:
        """Decide ``call`` from a lease, taking one if needed; None: reserve it per call."""
        slot = (call.api_key_id or 0, call.listing_id, call.price, call.account_id)
        for _ in range(3):
            now = time.monotonic()
            lease = self._book.get(slot)
            if lease is not None and lease.left > 0 and not lease.gone \
                    and now - lease.taken_at < self.max_age_s:
                lease.left -= 1
                lease.inflight += 1
                lease.used_at = now
                return Reservation(
                    call, True, PAID, 0, lease.credits_after + lease.left * lease.price,
                    rate_limit=lease.rate_limit, rate_remaining=lease.rate_left + lease.left,
                    rate_reset_ms=lease.rate_reset_ms, lease=lease)
            if self._skip_until.get(slot, 0.0) > now:
                return None
            if await self._take(slot, call, lease) is None:
                return None
        return None

    async def _take(self, slot: Slot, call: CallSpec, old: Lease | None) -> Lease | None:
        """One LEASE script for every caller that found the slot's lease spent."""
        pending = self._taking.get(slot)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Lease | None] = asyncio.get_running_loop().create_future()
        self._taking[slot] = fut
        try:
            lease = await self._lease(slot, call, old)
            fut.set_result(lease)
            return lease
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a caller that awaits it raises it
            raise
        finally:
            del self._taking[slot]

    async def _lease(self, slot: Slot, call: CallSpec, old: Lease | None) -> Lease | None:
        now = time.monotonic()
        size = self._size.get(slot, 16)
        if old is not None:  # spent within a second: take more next time; else less
            size = min(self._max_calls, size * 2) if now - old.taken_at < 1.0 else max(4, size // 2)
            self._retire(slot, old)
        self._size[slot] = size
        n = self._names
        day, month = self._day_month()
        self._seq += 1
        lease_id = f"lease:{self._prefix}:{self._seq}"
        acct, shard = call.account_id, n.shard(call.account_id)
        keys = [
            n.marker(acct), n.trial(acct, call.listing_id),
            n.credit(acct), n.rate_key(acct, call.api_key_id),
            n.rate_key_listing(acct, call.api_key_id, call.listing_id),
            n.spend_day(acct, call.api_key_id, day), n.spend_month(acct, call.api_key_id, month),
            n.holds(shard), n.holdq(shard), n.leased(acct),
        ]
        args: list[object] = [
            call.trial_calls, call.price, call.key_rps, call.key_burst, call.listing_rps,
            call.listing_burst, -1 if call.cap_day is None else call.cap_day,
            -1 if call.cap_month is None else call.cap_month, lease_id, call.credit_line, size,
        ]
        status, granted, credits, limit, left, reset = map(int, await self._script(
            "LEASE", keys, args))
        if status != 2:  # hydrate, a trial left, or nothing to lease: the call reserves
            self._skip_until[slot] = now + (0.0 if status == -1 else 1.0)
            return None
        taken = time.monotonic()
        lease = Lease(lease_id, call.account_id, call.price, granted, credits, limit, left, reset,
                      taken_at=taken, used_at=taken)
        self._book[slot] = lease
        self._start_reaper()
        return lease

    def release(self, res: Reservation) -> bool:
        """A leased call failed: its call goes back to the lease, nothing is charged."""
        lease: Lease = res.lease
        lease.inflight -= 1
        if lease.gone:
            return False
        lease.left += 1
        return True

    def in_flight(self, account_id: int) -> int:
        """Credit of ``account_id`` that this process's leased calls in flight hold."""
        leases = [*self._book.values(), *self._retired]
        return sum(x.inflight * x.price for x in leases if x.account_id == account_id)

    async def give_back(self, account_id: int) -> int:
        """Return the undecided rest of every lease of ``account_id`` (one of its calls was
        refused: the credit, or a cap's room, may sit in them); how much went back."""
        back = 0
        for slot, lease in [*self._book.items(), *((None, x) for x in self._retired)]:
            if lease.account_id != account_id or lease.gone or lease.left <= 0:
                continue
            amount, lease.left = lease.left * lease.price, 0
            if slot is not None:
                self._retire(slot, lease)
            back += int(await self._script(
                "SHRINK_LEASE", self._hold_keys(lease), [lease.id, amount]))
        return back

    # -- committing ----------------------------------------------------------------------------
    async def commit(self, res: Reservation, *, latency_us: int) -> bool:
        """Queue the call's usage event for the next group commit; True once it committed,
        False if its lease was gone (the call must not be answered as served)."""
        c = res.call
        share, fee = split(c.price, self._fee_bps)
        key = "" if c.api_key_id is None else c.api_key_id
        line = (f"{c.request_id}|{c.account_id}|{key}|{c.listing_id}|{c.listing_version_id}|"
                f"{c.seller_id}|{PAID}|{c.price}|{share}|{fee}|{latency_us}|"
                f"{int(time.time() * 1000)}")
        loop = asyncio.get_running_loop()
        pending = _Pending(res.lease, line, loop.create_future())
        self._queue.append(pending)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        ok = await pending.done  # failed or False: the hold releases the call (release)
        if ok:
            res.lease.inflight -= 1
        return ok

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        by_shard: dict[int, list[_Pending]] = {}  # a group commit runs in one shard's slot
        for p in batch:
            by_shard.setdefault(self._names.shard(p.lease.account_id), []).append(p)
        for shard, part in by_shard.items():
            group = self._group(shard, part)
            sent = self._submit("COMMIT_LEASED", group.keys, group.args)
            self._sending.add(sent)
            sent.add_done_callback(partial(self._sent, group))

    def _hold_keys(self, lease: Lease) -> list[str]:
        shard = self._names.shard(lease.account_id)
        return [self._names.holds(shard), self._names.holdq(shard)]

    def _group(self, shard: int, batch: list[_Pending]) -> _Group:
        by_lease: dict[Lease, list[_Pending]] = {}
        for p in batch:
            by_lease.setdefault(p.lease, []).append(p)
        args: list[object] = [len(by_lease)]
        for lease, calls in by_lease.items():
            args += [lease.id, lease.price * len(calls), "\n".join(p.line for p in calls)]
        self._seq += 1
        n = self._names
        marker = n.lease_batch(shard, f"{self._prefix}:{self._seq}")
        keys = [n.holds(shard), n.holdq(shard), n.stream(shard), marker]
        return _Group(by_lease, keys, args, time.monotonic() + COMMIT_RETRY_S)

    def _sent(self, group: _Group, sent: asyncio.Future[Any]) -> None:
        self._sending.discard(sent)
        failure = ConnectionError("group commit cancelled") if sent.cancelled() \
            else sent.exception()
        if failure is None:
            group.settle(sent.result())
        else:  # it may have run: the retries send the same batch (the same marker)
            self._spawn(self._commit(group, failure))

    async def _commit(self, group: _Group, failure: BaseException) -> None:
        """COMMIT_LEASED again until the batch is known to have run (a retry with the same
        marker runs it once) or its deadline passes."""
        while True:
            if time.monotonic() > group.deadline:
                group.fail(failure)
                return
            await asyncio.sleep(0.05)
            try:
                outcome = await self._script("COMMIT_LEASED", group.keys, group.args)
            except Exception as exc:
                failure = exc
                continue
            group.settle(outcome)
            return

    # -- giving back ---------------------------------------------------------------------------
    def _retire(self, slot: Slot, lease: Lease) -> None:
        if self._book.get(slot) is lease:
            del self._book[slot]
        self._retired.append(lease)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while self._book or self._retired:
            await asyncio.sleep(self.idle_s / 2)
            with contextlib.suppress(Exception):  # Redis away: the sweeper refunds them
                await self.reap()

    async def reap(self, *, everything: bool = False) -> int:
        """Give back leases idle or too old (all of them with ``everything``) whose calls are
        all committed or given back: their rest goes back to credit and spend."""
        now = time.monotonic()
        for slot, lease in list(self._book.items()):
            if everything or now - lease.taken_at >= self.max_age_s \
                    or now - lease.used_at >= self.idle_s:
                self._retire(slot, lease)
        done = [lease for lease in self._retired if lease.inflight <= 0]
        self._retired = [lease for lease in self._retired if lease.inflight > 0]
        returned = 0
        for lease in done:
            if not lease.gone and await self._script("RELEASE", self._hold_keys(lease),
                                                     [lease.id]):
                returned += 1
            lease.gone = True
        return returned

    async def close(self) -> None:
        """Give every lease back (the app stops)."""
        if self._reaper is not None:
            self._reaper.cancel()
        while self._tasks or self._sending:  # group commits on their way (and retries)
            await asyncio.wait([*self._tasks, *self._sending])
        with contextlib.suppress(Exception):  # Redis away: the sweeper refunds them
            await self.reap(everything=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
