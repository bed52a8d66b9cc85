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

from . import scripts
from .calls import CallSpec, Reservation
from .hold import Hold, Refuse
from .meter import Meter, day_month

DEMO = "demo"

class DemoMeter:
    """Demo reservations and per-listing demo concurrency, on the meter's Redis."""

    def __init__(self, meter: Meter, *, slot_ttl_s: float = 60.0) -> None:
        self.meter = meter
        self.ns = meter.ns
        self.slot_ttl_ms = int(slot_ttl_s * 1000)
        self._reserve = meter.redis.register_script(scripts.DEMO_RESERVE)
        self._acquire = meter.redis.register_script(scripts.DEMO_SLOT_ACQUIRE)
        self._release = meter.redis.register_script(scripts.DEMO_SLOT_RELEASE)
        self._upload = meter.redis.register_script(scripts.UPLOAD_QUOTA)

    def visitor_key(self, visitor: str, ts: float | None = None) -> str:
        return self.meter.names.demo_visitor(day_month(ts)[0], visitor)

    async def reserve_trial(self, call: CallSpec) -> Reservation:
        """One of the buyer's free trial calls on the listing, or a refusal; never money."""
        # A daily spend cap of zero and a positive price: past the trial the script refuses.
        return await self.meter.reserve(replace(
            call, api_key_id=None, price=max(call.price, 1), cap_day=0, cap_month=0,
            key_rps=0, key_burst=0, listing_rps=0, listing_burst=0,
        ))

    async def reserve(self, call: CallSpec, visitor: str, limit_per_day: int) -> Reservation:
        """One call of ``visitor``'s daily demo quota (kind ``demo``, price 0), or a refusal."""
        names = self.meter.names
        shard = names.visitor_shard(visitor)  # the quota and its hold share the visitor's slot
        allowed, left = await self._reserve(
            [self.visitor_key(visitor), names.holds(shard), names.holdq(shard)],
            [limit_per_day, call.request_id],
        )
        ok = bool(allowed)
        return Reservation(replace(call, price=0), ok, DEMO if ok else "", int(left), 0,
                           refusal="" if ok else DEMO, shard=shard)

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

    async def charge_upload(self, visitor: str, nbytes: int, limit_per_day: int) -> bool:
        """Count ``nbytes`` uploaded to the demos by ``visitor`` today; False (nothing
        counted) when that would pass ``limit_per_day``."""
        key = self.meter.names.upload_bytes(day_month()[0], visitor)
        allowed, _ = await self._upload([key], [limit_per_day, nbytes])
        return bool(allowed)

    async def remaining(self, visitor: str, limit_per_day: int) -> int:
        used = int(await self.meter.redis.get(self.visitor_key(visitor)) or 0)
        return max(limit_per_day - used, 0)

    @asynccontextmanager
    async def slot(self, listing_id: int, limit: int) -> AsyncIterator[bool]:
        """A demo slot of the listing for the duration of the block: yields False when all
        ``limit`` slots are taken (nothing is held then)."""
        key = self.meter.names.demo_inflight(listing_id)
        taken = bool(await self._acquire([key], [limit, self.slot_ttl_ms]))
        try:
            yield taken
        finally:
            if taken:
                await self._release([key], [])
