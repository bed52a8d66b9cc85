"""Reservations on Redis: reserve before inference, commit or release after it.

One Lua script decides a call (rate limits, trial quota, spend caps, prepaid credit) and
records a hold; commit turns the hold into a usage event on the stream; release (or the
sweeper, for holds of calls that died) refunds it. Commands from concurrent calls share round
trips through an auto-pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from . import scripts
from .autopipe import AutoPipeline, ClusterAutoPipeline
from .calls import PAID, REFUSALS, TRIAL, CallSpec, Reservation
from .hold import Hold, Refuse
from .keys import Keys
from .lease import Leases
from .ledger import Event
from .money import split


@dataclass(frozen=True)
class Snapshot:
    """What the ledger says about an account, to rebuild its Redis counters."""

    credits: int
    trials: dict[int, int] = field(default_factory=dict)  # listing id -> trial calls used
    spend: dict[str, int] = field(default_factory=dict)  # "d:<key>:<yyyymmdd>" -> micro-units


SnapshotLoader = Callable[[int], Awaitable[Snapshot]]
AsyncClient = aioredis.Redis | RedisCluster  # one server (or embedded Valkey), or a cluster

def day_month(ts: float | None = None) -> tuple[str, str]:
    t = time.gmtime(ts)
    return f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", f"{t.tm_year:04d}{t.tm_mon:02d}"


class Meter:
    """Trial quotas, rate limits, spend caps and prepaid credits kept in Redis, rebuilt from
    the ledger when missing."""

    def __init__(
        self, client: AsyncClient, *, fee_bps: int, load_snapshot: SnapshotLoader,
        namespace: str = "am:", leases: bool = True,
    ) -> None:
        self.redis = client
        self.fee_bps = fee_bps
        self.ns = namespace
        self.names = Keys(namespace)
        self._load_snapshot = load_snapshot
        self._pipe: AutoPipeline | ClusterAutoPipeline = (
            ClusterAutoPipeline(client) if isinstance(client, RedisCluster)
            else AutoPipeline(client))
        self._sha = {
            name: hashlib.sha1(getattr(scripts, name).encode()).hexdigest()
            for name in ("RESERVE", "COMMIT", "RELEASE", "LEASE", "COMMIT_LEASED",
                         "SHRINK_LEASE")
        }
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._hydrate = client.register_script(scripts.HYDRATE)
        self._add_credits = client.register_script(scripts.ADD_CREDITS)
        self._throttle = client.register_script(scripts.THROTTLE)
        self.leases = Leases(self._script, self._submit, self.names, fee_bps=fee_bps,
                             day_month=day_month) if leases else None

    # -- key names ---------------------------------------------------------------------------
    def _keys(self, account_id: int) -> tuple[str, str]:
        return self.names.marker(account_id), self.names.credit(account_id)

    def _trial_key(self, account_id: int, listing_id: int) -> str:
        return self.names.trial(account_id, listing_id)

    def _spend_keys(self, account_id: int, key_id: int | None, ts: float | None = None
                    ) -> tuple[str, str]:
        day, month = day_month(ts)
        n = self.names
        return n.spend_day(account_id, key_id, day), n.spend_month(account_id, key_id, month)

    def _shard(self, res: Reservation) -> int:
        """The shard that holds ``res``: its account's, or a demo visitor's."""
        return res.shard if res.shard >= 0 else self.names.shard(res.call.account_id)

    async def _script(self, name: str, keys: list[str], args: list[object]) -> Any:
        try:
            return await self._pipe.execute("EVALSHA", self._sha[name], len(keys), *keys, *args)
        except NoScriptError:  # a restarted Redis (or a cluster's new primary) forgot them
            await self._load(name)
            return await self._pipe.execute("EVALSHA", self._sha[name], len(keys), *keys, *args)

    def _submit(self, name: str, keys: list[str], args: list[object]) -> asyncio.Future[Any]:
        """The script sent at once (a missing script fails it: ``_script`` then loads it)."""
        return self._pipe.submit("EVALSHA", self._sha[name], len(keys), *keys, *args)

    async def _load(self, name: str) -> None:
        """SCRIPT LOAD once for every call that found the script missing at the same time
        (on a cluster it goes to every primary)."""
        task = self._loading.get(name)
        if task is None or task.done():
            task = self._loading[name] = asyncio.ensure_future(
                self.redis.script_load(getattr(scripts, name)))
        await asyncio.shield(task)

    # -- the hot path ------------------------------------------------------------------------
    async def reserve(self, call: CallSpec) -> Reservation:
        """Rate-limit, then take one trial call or hold the price from credit, atomically.
        A paid call is decided from a lease when one can be had (lease.py)."""
        if self.leases is not None and call.charge_kind == PAID and call.price > 0:
            leased = await self.leases.reserve(call)
            if leased is not None:
                return leased
        acct, n = call.account_id, self.names
        marker, credit = self._keys(acct)
        day, month = self._spend_keys(acct, call.api_key_id)
        shard = n.shard(acct)
        keys = [
            marker, self._trial_key(acct, call.listing_id), credit,
            n.rate_key(acct, call.api_key_id),
            n.rate_key_listing(acct, call.api_key_id, call.listing_id),
            day, month, n.holds(shard), n.holdq(shard),
        ]
        args: list[object] = [
            call.trial_calls, call.price, call.key_rps, call.key_burst, call.listing_rps,
            call.listing_burst, -1 if call.cap_day is None else call.cap_day,
            -1 if call.cap_month is None else call.cap_month, call.request_id,
            call.credit_line,
        ]
        reply = await self._script("RESERVE", keys, args)
        if reply[0] == -1:
            await self.hydrate(call.account_id)
            reply = await self._script("RESERVE", keys, args)
        if reply[0] in (0, 4, 5) and self.leases is not None \
                and await self.leases.give_back(call.account_id):
            reply = await self._script("RESERVE", keys, args)  # refused while leases held it
        status, trial_left, credits, limit, left, reset, wait = map(int, reply)
        ok = status in (1, 2)
        return Reservation(
            call, ok, (TRIAL if status == 1 else PAID) if ok else "", trial_left, credits,
            refusal=REFUSALS.get(status, ""), rate_limit=limit, rate_remaining=left,
            rate_reset_ms=reset, retry_after_ms=wait,
        )

    async def commit(self, res: Reservation, *, latency_us: int) -> bool:
        """Turn the hold into a usage event on the durable stream; False if the hold was
        already refunded (the call took longer than the sweeper allows): then nothing is
        charged and the call must not be answered as served."""
        if res.lease is not None:
            return await self.leases.commit(res, latency_us=latency_us)  # type: ignore[union-attr]
        c = res.call
        share, fee = split(res.cost, self.fee_bps)
        event = Event(
            id=c.request_id, account_id=c.account_id, api_key_id=c.api_key_id,
            listing_id=c.listing_id, listing_version_id=c.listing_version_id,
            seller_id=c.seller_id, kind=c.charge_kind if res.kind == PAID else res.kind,
            price=res.cost, seller_share=share,
            platform_fee=fee, latency_us=latency_us, ts_ms=int(time.time() * 1000),
        )
        n, shard = self.names, self._shard(res)
        done = await self._script("COMMIT", [n.holds(shard), n.holdq(shard), n.stream(shard)],
                                  [c.request_id, "e", event.encode()])
        return bool(done)

    async def release(self, res: Reservation) -> bool:
        """Give back what reserve() took: the call failed and is not charged."""
        if not res.ok:
            return False
        if res.lease is not None:
            return self.leases.release(res)  # type: ignore[union-attr]
        shard = self._shard(res)
        return bool(await self._script("RELEASE", [self.names.holds(shard),
                                                   self.names.holdq(shard)],
                                       [res.call.request_id]))

    def hold(self, call: CallSpec, *, refuse: Refuse, started: float | None = None,
             reserve: Callable[[], Awaitable[Reservation]] | None = None) -> Hold:
        """Reserve ``call`` for the block: commit when it succeeds, release when it raises;
        a refusal raises ``refuse(reservation)``. ``reserve`` replaces the paid-call
        reservation (the demo quota's); ``started`` is when the call began (its latency)."""
        return Hold(self, reserve or (lambda: self.reserve(call)), refuse, started=started)

    # -- throttles (off the paid path) -------------------------------------------------------
    async def throttle(self, key: str, rps: float, burst: int, *, cost: int = 1
                       ) -> tuple[bool, int]:
        """GCRA bucket ``key`` (a ``Keys.throttle`` name): (allowed, retry-after ms). Takes
        ``cost`` calls when allowed; ``cost=0`` only looks whether one more would be."""
        allowed, wait = await self._throttle([key], [rps, burst, cost])
        return bool(allowed), int(wait)

    # -- the ledger side ---------------------------------------------------------------------
    async def hydrate(self, account_id: int) -> bool:
        """Rebuild an account's counters from the ledger unless they are already in Redis."""
        marker, credit = self._keys(account_id)
        if await self.redis.exists(marker):
            return False
        snap = await self._load_snapshot(account_id)
        keys = [marker, credit]
        values: list[int] = [snap.credits]
        for lid, used in snap.trials.items():
            keys.append(self._trial_key(account_id, lid))
            values.append(used)
        for name, spent in snap.spend.items():
            keys.append(self.names.spend(account_id, name))
            values.append(spent)
        return bool(await self._hydrate(keys, values))

    async def add_credits(
        self, account_id: int, amount: int, record: Callable[[], Awaitable[bool]]
    ) -> int:
        """Write a credit movement to the ledger with ``record`` and apply it to Redis once.

        Counters are hydrated *before* the ledger write, so a rebuild can never see the
        movement and then have it added a second time. ``record`` returns False for a
        movement already in the ledger (a replay): nothing is added then.
        """
        await self.hydrate(account_id)
        if not await record():
            return await self.credits(account_id)
        marker, credit = self._keys(account_id)
        await self._add_credits([marker, credit], [amount])  # nil: Redis lost the counters
        return await self.credits(account_id)  # meanwhile, and the rebuild reads the ledger

    async def credits(self, account_id: int) -> int:
        """Current spendable credit (after holds of calls in flight)."""
        await self.hydrate(account_id)
        credit, leased = await self.redis.mget(self._keys(account_id)[1],
                                               self.names.leased(account_id))
        held = self.leases.in_flight(account_id) if self.leases is not None else 0
        return int(credit or 0) + int(leased or 0) - held  # a lease's rest is the buyer's

    async def close(self) -> None:
        """Give back the process's leases (the app stops)."""
        if self.leases is not None:
            await self.leases.close()
