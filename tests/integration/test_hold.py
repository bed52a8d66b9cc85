"""The reservation lifecycle (``Meter.hold``) on the real Redis servers: commit when the block
succeeds, release when it raises, and a failing metering client is a 503, never a 500."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from metering import CallSpec, DemoMeter, Event, Meter, add_credit, snapshot
from serving import InferenceFailed, MeteringUnavailable, PaymentRequired
from storefront.db import make_engine, migrate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(stack):
    e = make_engine(stack["db"].replace("postgresql://", "postgresql+psycopg://"))
    migrate(e)
    yield e
    e.dispose()


@pytest.fixture
async def meter(stack, engine):
    client = aioredis.Redis.from_url(stack["redis"])

    async def load(account_id):
        return await asyncio.to_thread(snapshot, engine, account_id)

    yield Meter(client, fee_bps=2000, load_snapshot=load, namespace=stack["ns"] + "h:")
    await client.aclose()


async def funded(meter: Meter, engine, amount: int) -> int:
    acct = random.randint(10**6, 10**9)

    async def record():
        return await asyncio.to_thread(add_credit, engine, acct, amount, reason="grant",
                                       reference=f"grant:{uuid.uuid4().hex}")

    await meter.add_credits(acct, amount, record)
    return acct


def spec(acct: int, price: int = 1000, trial: int = 0) -> CallSpec:
    return CallSpec(request_id=uuid.uuid4().hex, account_id=acct, api_key_id=1, listing_id=3,
                    listing_version_id=3, seller_id=9, price=price, trial_calls=trial)


def released() -> float:
    return REGISTRY.get_sample_value("aimarket_reservations_released_total",
                                     {"why": "failed"}) or 0.0


def refuse(res):
    return PaymentRequired(f"no: {res.credits_remaining}", code="insufficient_credits")


async def events(meter: Meter) -> list[Event]:
    return [e for stream in meter.names.streams for _, fields in await meter.redis.xrange(stream)
            for e in Event.from_entry(fields)]


async def test_a_block_that_succeeds_is_charged_once(meter, engine):
    acct = await funded(meter, engine, 5000)
    call = spec(acct)
    async with meter.hold(call, refuse=refuse) as res:
        assert res.kind == "paid"
    assert await meter.credits(acct) == 4000
    mine = [e for e in await events(meter) if e.id == call.request_id]
    assert len(mine) == 1 and (mine[0].price, mine[0].kind) == (1000, "paid")


async def test_a_block_that_raises_is_released_and_counted(meter, engine):
    acct = await funded(meter, engine, 5000)
    call, before = spec(acct), released()
    with pytest.raises(InferenceFailed):
        async with meter.hold(call, refuse=refuse):
            assert await meter.credits(acct) == 4000  # held while the block runs
            raise InferenceFailed("the model broke")
    assert await meter.credits(acct) == 5000
    assert released() == before + 1
    assert not [e for e in await events(meter) if e.id == call.request_id]


async def test_a_refusal_raises_the_callers_error_and_holds_nothing(meter, engine):
    acct = await funded(meter, engine, 500)
    with pytest.raises(PaymentRequired, match="no: 500"):
        async with meter.hold(spec(acct), refuse=refuse):
            raise AssertionError("the block must not run")
    assert await meter.credits(acct) == 500


async def test_export_charges_carry_their_kind(meter, engine):
    acct = await funded(meter, engine, 5000)
    call = CallSpec(request_id=f"purchase-{uuid.uuid4().hex}", account_id=acct,
                    api_key_id=None, listing_id=3, listing_version_id=3, seller_id=9,
                    price=2500, trial_calls=0, charge_kind="export")
    async with meter.hold(call, refuse=refuse):
        pass
    (event,) = [e for e in await events(meter) if e.id == call.request_id]
    assert (event.kind, event.price, event.seller_share, event.platform_fee) == (
        "export", 2500, 2000, 500)


class BrokenClient:
    """A Redis client breaking as redis-py's did while its pool was dropped under load."""

    def __getattr__(self, name):
        raise AttributeError("'NoneType' object has no attribute 'writelines'")


async def test_a_broken_metering_client_is_a_503_not_a_500(meter, engine):
    acct = await funded(meter, engine, 5000)

    async def broken_reserve():
        return await BrokenClient().evalsha()

    with pytest.raises(MeteringUnavailable):
        async with meter.hold(spec(acct), refuse=refuse, reserve=broken_reserve):
            raise AssertionError("the block must not run")


async def test_demo_release_survives_a_failing_redis(meter, engine, monkeypatch):
    """The demo call's hold is the same construct: a release that fails is swallowed (the
    sweep refunds the hold) and the block's own error reaches the caller."""
    demos = DemoMeter(meter)
    call = spec(0, price=0)

    async def failing_release(_res):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(meter, "release", failing_release)
    with pytest.raises(InferenceFailed):
        async with demos.hold(call, f"v{uuid.uuid4().hex}", 3, refuse=refuse) as res:
            assert res.kind == "demo"
            raise InferenceFailed("the model broke")
