"""Demo calls: the paid call's reservation, for calls made from a listing's try-it page.

A demo call is never charged. A signed-in buyer's demo call takes one of their free trial
calls on the listing while any are left (the paid-call reservation with a spend cap of zero,
so it can never take money); otherwise it counts against the visitor's daily demo quota.
Either way it records a hold, so ``Meter.commit`` turns it into one usage event (kind
``trial`` or ``demo``, price 0) and ``Meter.release`` gives the quota back when the call fails.
Each listing also has a concurrency limit on demo calls in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from .hold import Hold, Refuse
from .meter import CallSpec, Meter, Reservation, day_month

DEMO = "demo"

# KEYS: 1 the visitor's demo counter today, 2 holds, 3 holdq; ARGV: 1 daily limit, 2 request id
# -> {allowed 0/1, remaining}
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
if used >= limit then return {0, 0} end
local t = redis.call('TIME')
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 172800000)
redis.call('HSET', KEYS[2], ARGV[2], 'demo|0|' .. KEYS[1] .. '|||')
redis.call('ZADD', KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[2])
return {1, limit - used - 1}
"""

# KEYS: the listing's demo calls in flight; ARGV: limit, key lifetime (ms) -> 1 taken, 0 full.
# The lifetime bounds how long a slot of a worker that died stays taken.
_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class DemoMeter:
    """Demo reservations and per-listing demo concurrency, on the meter's Redis."""

    def __init__(self, meter: Meter, *, slot_ttl_s: float = 60.0) -> None:
        self.meter = meter
        self.ns = meter.ns
        self.slot_ttl_ms = int(slot_ttl_s * 1000)
        self._reserve = meter.redis.register_script(_RESERVE)
        self._acquire = meter.redis.register_script(_ACQUIRE)
        self._release = meter.redis.register_script(_RELEASE)

    def visitor_key(self, visitor: str, ts: float | None = None) -> str:
        return f"{self.ns}demo:{day_month(ts)[0]}:{visitor}"

    async def reserve_trial(self, call: CallSpec) -> Reservation:
        """One of the buyer's free trial calls on the listing, or a refusal; never money."""
        # A daily spend cap of zero and a positive price: past the trial the script refuses.
        return await self.meter.reserve(replace(
            call, api_key_id=None, price=max(call.price, 1), cap_day=0, cap_month=0,
            key_rps=0, key_burst=0, listing_rps=0, listing_burst=0,
        ))

    async def reserve(self, call: CallSpec, visitor: str, limit_per_day: int) -> Reservation:
        """One call of ``visitor``'s daily demo quota (kind ``demo``, price 0), or a refusal."""
        allowed, left = await self._reserve(
            [self.visitor_key(visitor), self.meter.holds, self.meter.holdq],
            [limit_per_day, call.request_id],
        )  # type: ignore[misc]
        ok = bool(allowed)
        return Reservation(replace(call, price=0), ok, DEMO if ok else "", int(left), 0,
                           refusal="" if ok else DEMO)

    def hold(self, call: CallSpec, visitor: str, limit_per_day: int, *, refuse: Refuse,
             started: float | None = None) -> Hold:
        """``Meter.hold`` for a demo call: a signed-in buyer's free trial call on the listing
        while any are left (``call.account_id`` set), else one of ``visitor``'s demo calls."""
        async def reserve() -> Reservation:
            if call.account_id:
                res = await self.reserve_trial(call)
                if res.ok:
                    return res
            return await self.reserve(call, visitor, limit_per_day)

        return self.meter.hold(call, refuse=refuse, started=started, reserve=reserve)

    async def remaining(self, visitor: str, limit_per_day: int) -> int:
        used = int(await self.meter.redis.get(self.visitor_key(visitor)) or 0)
        return max(limit_per_day - used, 0)

    @asynccontextmanager
    async def slot(self, listing_id: int, limit: int) -> AsyncIterator[bool]:
        """A demo slot of the listing for the duration of the block: yields False when all
        ``limit`` slots are taken (nothing is held then)."""
        key = f"{self.ns}demo:inflight:{listing_id}"
        taken = bool(await self._acquire([key], [limit, self.slot_ttl_ms]))
        try:
            yield taken
        finally:
            if taken:
                await self._release([key], [])
