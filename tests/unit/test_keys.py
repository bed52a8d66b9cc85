"""Metering's key layout for a Redis Cluster: every key one script touches is in one slot."""

from __future__ import annotations

import random

from redis.crc import key_slot

from metering.keys import SHARDS, Keys


def slots(*keys: str) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def test_every_key_of_an_accounts_decisions_shares_one_slot() -> None:
    names = Keys("am:")
    for acct in [0, 1, 15, 16, 17, *random.sample(range(10**9), 200)]:
        shard = names.shard(acct)
        key, listing = random.randint(1, 10**6), random.randint(1, 10**6)
        reserve = [  # RESERVE and LEASE (scripts.py), in their KEYS order
            names.marker(acct), names.trial(acct, listing), names.credit(acct),
            names.rate_key(acct, key), names.rate_key_listing(acct, key, listing),
            names.spend_day(acct, key, "20261202"), names.spend_month(acct, key, "202612"),
            names.holds(shard), names.holdq(shard), names.leased(acct),
        ]
        commit = [names.holds(shard), names.holdq(shard), names.stream(shard),
                  names.lease_batch(shard, "p:1")]  # COMMIT, COMMIT_LEASED
        hydrate = [names.spend(acct, f"d:{key}:20261202"), names.rate_key(acct, None)]
        assert len(slots(*reserve, *commit, *hydrate)) == 1, acct


def test_a_visitors_demo_quota_shares_the_slot_of_its_holds() -> None:
    names = Keys("t1:")
    for visitor in ["10.0.0.1", "2001:db8::1", "a" * 64]:
        shard = names.visitor_shard(visitor)
        assert len(slots(names.demo_visitor("20261202", visitor), names.holds(shard),
                         names.holdq(shard))) == 1


def test_shards_spread_over_the_primaries_of_a_cluster() -> None:
    # `redis-cli --cluster create` with 3 primaries gives each a third of the slots
    names = Keys("am:")
    owners = [key_slot(names.stream(i).encode()) * 3 // 16384 for i in range(SHARDS)]
    assert sorted(owners.count(p) for p in range(3)) == [5, 5, 6]
    assert len({key_slot(names.stream(i).encode()) for i in range(SHARDS)}) == SHARDS
    assert len(set(names.streams)) == SHARDS + 1  # and the unsharded one of older releases


def test_a_cluster_needs_a_node_url() -> None:
    import pytest
    from pydantic import ValidationError

    from storefront.config import Settings

    with pytest.raises(ValidationError, match="AIMARKET_REDIS_URL"):
        Settings(redis_cluster=True, redis_url=None)
    assert Settings(redis_cluster=True, redis_url="redis://10.0.0.5:7000").redis_cluster
