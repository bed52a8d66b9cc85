"""Every Redis key name metering uses, in one place (all under the configured namespace).

Keys are laid out for a Redis Cluster and work unchanged on one server. Every key one script
touches shares a hash tag (``{...}``: the part of the name a cluster hashes to a slot):
accounts are spread over ``SHARDS`` shards, and an account's counters (credit, trial calls,
its keys' rate buckets and spend) live in its shard next to that shard's holds, hold queue and
usage stream. So a decision (reserve, commit, release, lease, sweep) runs in one slot, and the
flusher reads every shard's stream. A demo visitor's quota lives in the visitor's shard. Keys
that scripts touch alone (throttles, demo slots, upload bytes, the flushed counter) carry no
tag: a cluster spreads them by their whole name.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache, cached_property

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Fixed: an account's shard must not move while its counters, holds and events are in Redis.
# 16 tags spread over up to 16 primaries (the tags' slots are spread evenly over the slots).
SHARDS = 16


@cache
def _tags(shards: int) -> tuple[str, ...]:
    """One hash tag per shard, the i-th hashing into the i-th of ``shards`` equal slot ranges,
    so a cluster whose primaries own contiguous ranges (``redis-cli --cluster create``)
    gets its share of the shards on each primary."""
    span = REDIS_CLUSTER_HASH_SLOTS // shards
    tags = []
    for i in range(shards):
        j = 0
        while key_slot(f"m{i}.{j}".encode()) // span != i:
            j += 1
        tags.append(f"{{m{i}.{j}}}")
    return tuple(tags)


@dataclass(frozen=True)
class Keys:
    """The key names of one namespace (``am:`` by default; tests use their own)."""

    ns: str = "am:"
    shards: int = SHARDS

    # -- shards -----------------------------------------------------------------------------
    def shard(self, account_id: int) -> int:
        """The shard of an account: where its counters, holds and usage events live."""
        return account_id % self.shards

    def visitor_shard(self, visitor: str) -> int:
        """The shard of a demo visitor's daily quota (and its holds)."""
        return zlib.crc32(visitor.encode()) % self.shards

    @cached_property
    def _prefix(self) -> tuple[str, ...]:
        return tuple(f"{self.ns}{tag}" for tag in _tags(self.shards))

    def _a(self, account_id: int) -> str:
        return self._prefix[account_id % self.shards]

    def _s(self, shard: int) -> str:
        return self._prefix[shard]

    def stream(self, shard: int) -> str:
        """A shard's usage-event stream (the flusher moves every shard's into the ledger)."""
        return f"{self._s(shard)}usage"

    def holds(self, shard: int) -> str:
        """Hash: request id -> what its reservation holds (see scripts.py), per shard."""
        return f"{self._s(shard)}holds"

    def holdq(self, shard: int) -> str:
        """Sorted set: request id by reservation time (the sweep's queue), per shard."""
        return f"{self._s(shard)}holdq"

    @property
    def streams(self) -> list[str]:
        """Every stream the flusher reads: the shards', then the one stream of releases
        before the shards (events a stopped older version left there still reach the ledger)."""
        return [self.stream(i) for i in range(self.shards)] + [f"{self.ns}usage"]

    @property
    def hold_sets(self) -> list[tuple[str, str]]:
        """(holds, holdq) of every shard."""
        return [(self.holds(i), self.holdq(i)) for i in range(self.shards)]

    @property
    def legacy_holds(self) -> tuple[str, str]:
        """The one (holds, holdq) of releases before the shards (one server only: the two
        names hash to different slots); the sweeper still refunds what they hold."""
        return f"{self.ns}holds", f"{self.ns}holdq"

    @property
    def flushed(self) -> str:
        """Counter of events every flusher wrote to the ledger (a metric)."""
        return f"{self.ns}flushed"

    # -- an account's counters (all in its shard) --------------------------------------------
    def marker(self, account_id: int) -> str:
        """Set once an account's counters are rebuilt from the ledger."""
        return f"{self._a(account_id)}h:{account_id}"

    def credit(self, account_id: int) -> str:
        return f"{self._a(account_id)}c:{account_id}"

    def leased(self, account_id: int) -> str:
        """Credit of the account held by leases (lease.py): still the buyer's, not spent."""
        return f"{self._a(account_id)}l:{account_id}"

    def lease_batch(self, shard: int, batch_id: str) -> str:
        """A leased group commit's outcome (one shard's part), so a retried batch runs once."""
        return f"{self._s(shard)}lb:{batch_id}"

    def trial(self, account_id: int, listing_id: int) -> str:
        return f"{self._a(account_id)}t:{account_id}:{listing_id}"

    @property
    def all_trials(self) -> str:
        """SCAN pattern of every account's trial counters (in every shard)."""
        return f"{self.ns}{{m*}}t:*"

    def trial_owner(self, key: str) -> int | None:
        """The account of a trial counter's name, None for any other key."""
        if not key.startswith(f"{self.ns}{{"):
            return None
        _tag, sep, rest = key[len(self.ns):].partition("}t:")
        acct, _, _ = rest.partition(":")
        return int(acct) if sep and acct.isdigit() else None

    def spend(self, account_id: int, name: str) -> str:
        """A key's spend counter by its short name ``d:<key>:<yyyymmdd>`` / ``m:<key>:<yyyymm>``
        (in the shard of the account the key belongs to)."""
        return f"{self._a(account_id)}s:{name}"

    def spend_day(self, account_id: int, key_id: int | None, day: str) -> str:
        return self.spend(account_id, f"d:{key_id}:{day}")

    def spend_month(self, account_id: int, key_id: int | None, month: str) -> str:
        return self.spend(account_id, f"m:{key_id}:{month}")

    def rate_key(self, account_id: int, key_id: int | None) -> str:
        return f"{self._a(account_id)}rl:k:{key_id}"

    def rate_key_listing(self, account_id: int, key_id: int | None, listing_id: int) -> str:
        return f"{self._a(account_id)}rl:kl:{key_id}:{listing_id}"

    # -- demo calls and throttles ---------------------------------------------------------
    def demo_visitor(self, day: str, visitor: str) -> str:
        """A visitor's demo calls on one UTC day (in the visitor's shard)."""
        return f"{self._s(self.visitor_shard(visitor))}demo:{day}:{visitor}"

    def demo_inflight(self, listing_id: int) -> str:
        return f"{self.ns}demo:inflight:{listing_id}"

    def throttle(self, kind: str, who: str) -> str:
        """A throttle's GCRA bucket (``Meter.throttle``): ``kind`` login / login-addr /
        signup / demo / upload, ``who`` a digest of the address (and e-mail)."""
        return f"{self.ns}th:{kind}:{who}"

    def upload_bytes(self, day: str, who: str) -> str:
        """Bytes one address uploaded to the demos on one UTC day."""
        return f"{self.ns}up:{day}:{who}"
