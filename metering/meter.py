"""Reservations on Redis: reserve before inference, commit or release after it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from . import scripts
from .autopipe import AutoPipeline
from .ledger import Event
from .money import split

Snapshot = tuple[int, dict[int, int]]  # credit balance, trial calls used per listing
SnapshotLoader = Callable[[int], Awaitable[Snapshot]]

TRIAL, PAID = "trial", "paid"


@dataclass(frozen=True)
class CallSpec:
    """What the gateway knows about a call before it reserves."""

    request_id: str
    account_id: int
    api_key_id: int | None
    listing_id: int
    listing_version_id: int
    seller_id: int
    price: int  # micro-units per paid call
    trial_calls: int


@dataclass(frozen=True)
class Reservation:
    """The outcome of reserve(): ``ok`` with a kind, or refused for lack of credit."""

    call: CallSpec
    ok: bool
    kind: str  # trial | paid | "" when refused
    trial_remaining: int
    credits_remaining: int

    @property
    def cost(self) -> int:
        return self.call.price if self.kind == PAID else 0


class Meter:
    """Trial quotas and prepaid credits kept in Redis, rebuilt from the ledger when missing."""

    def __init__(
        self, client: aioredis.Redis, *, fee_bps: int, load_snapshot: SnapshotLoader,
        namespace: str = "am:",
    ) -> None:
        self.redis = client
        self.fee_bps = fee_bps
        self.ns = namespace
        self.stream = f"{namespace}usage"
        self._load_snapshot = load_snapshot
        self._pipe = AutoPipeline(client)
        self._hydrate = client.register_script(scripts.HYDRATE)
        self._add_credits = client.register_script(scripts.ADD_CREDITS)
        self._reserve_sha = hashlib.sha1(scripts.RESERVE.encode()).hexdigest()

    async def _reserve(self, keys: list[str], args: list[int]) -> list[int]:
        try:
            return await self._pipe.execute(  # type: ignore[no-any-return]
                "EVALSHA", self._reserve_sha, len(keys), *keys, *args
            )
        except NoScriptError:  # a restarted Redis forgot its scripts
            await self.redis.script_load(scripts.RESERVE)
            return await self._pipe.execute(  # type: ignore[no-any-return]
                "EVALSHA", self._reserve_sha, len(keys), *keys, *args
            )

    def _keys(self, account_id: int) -> tuple[str, str]:
        return f"{self.ns}h:{account_id}", f"{self.ns}c:{account_id}"

    def _trial_key(self, account_id: int, listing_id: int) -> str:
        return f"{self.ns}t:{account_id}:{listing_id}"

    async def reserve(self, call: CallSpec) -> Reservation:
        """Take one trial call or hold the price from credit, atomically."""
        marker, credit = self._keys(call.account_id)
        keys = [marker, self._trial_key(call.account_id, call.listing_id), credit]
        args = [call.trial_calls, call.price]
        status, trial_left, credits = await self._reserve(keys, args)
        if status == -1:
            await self.hydrate(call.account_id)
            status, trial_left, credits = await self._reserve(keys, args)
        if status in (1, 2):
            kind = TRIAL if status == 1 else PAID
            return Reservation(call, True, kind, int(trial_left), int(credits))
        return Reservation(call, False, "", 0, int(credits))

    async def commit(self, res: Reservation, *, latency_us: int) -> None:
        """Record the answered call as a usage event on the durable stream."""
        c = res.call
        share, fee = split(res.cost, self.fee_bps)
        event = Event(
            id=c.request_id, account_id=c.account_id, api_key_id=c.api_key_id,
            listing_id=c.listing_id, listing_version_id=c.listing_version_id,
            seller_id=c.seller_id, kind=res.kind, price=res.cost, seller_share=share,
            platform_fee=fee, latency_us=latency_us, ts_ms=int(time.time() * 1000),
        )
        fields = [part for kv in event.fields().items() for part in kv]
        await self._pipe.execute("XADD", self.stream, "*", *fields)

    async def release(self, res: Reservation) -> None:
        """Give back what reserve() took: the call failed and is not charged."""
        if not res.ok:
            return
        c = res.call
        if res.kind == TRIAL:
            await self._pipe.execute("DECR", self._trial_key(c.account_id, c.listing_id))
        else:
            await self._pipe.execute("INCRBY", self._keys(c.account_id)[1], c.price)

    async def hydrate(self, account_id: int) -> bool:
        """Rebuild an account's counters from the ledger unless they are already in Redis."""
        marker, credit = self._keys(account_id)
        if await self.redis.exists(marker):
            return False
        balance, trials = await self._load_snapshot(account_id)
        keys = [marker, credit] + [self._trial_key(account_id, lid) for lid in trials]
        return bool(await self._hydrate(keys, [balance, *trials.values()]))

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
        new = await self._add_credits([marker, credit], [amount])
        if new is None:  # Redis lost the counters meanwhile: the rebuild reads the ledger
            return await self.credits(account_id)
        return int(new)

    async def credits(self, account_id: int) -> int:
        """Current spendable credit (after holds of calls in flight)."""
        await self.hydrate(account_id)
        return int(await self.redis.get(self._keys(account_id)[1]) or 0)
