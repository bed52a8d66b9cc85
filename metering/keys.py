"""Every Redis key name metering uses, in one place (all under the configured namespace)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The key names of one namespace (``am:`` by default; tests use their own)."""

    ns: str = "am:"

    @property
    def stream(self) -> str:
        """The usage-event stream the flusher moves into the ledger."""
        return f"{self.ns}usage"

    @property
    def holds(self) -> str:
        """Hash: request id -> what its reservation holds (see scripts.py)."""
        return f"{self.ns}holds"

    @property
    def holdq(self) -> str:
        """Sorted set: request id by reservation time (the sweep's queue)."""
        return f"{self.ns}holdq"

    @property
    def flushed(self) -> str:
        """Counter of events every flusher wrote to the ledger (a metric)."""
        return f"{self.ns}flushed"

    def marker(self, account_id: int) -> str:
        """Set once an account's counters are rebuilt from the ledger."""
        return f"{self.ns}h:{account_id}"

    def credit(self, account_id: int) -> str:
        return f"{self.ns}c:{account_id}"

    def leased(self, account_id: int) -> str:
        """Credit of the account held by leases (lease.py): still the buyer's, not spent."""
        return f"{self.ns}l:{account_id}"

    def lease_batch(self, batch_id: str) -> str:
        """A leased group commit's outcome, so that a retried batch runs once."""
        return f"{self.ns}lb:{batch_id}"

    def trial(self, account_id: int, listing_id: int) -> str:
        return f"{self.ns}t:{account_id}:{listing_id}"

    def trials_of(self, account_id: int) -> str:
        """SCAN pattern of an account's trial counters."""
        return f"{self.ns}t:{account_id}:*"

    def spend(self, name: str) -> str:
        """A key's spend counter by its short name ``d:<key>:<yyyymmdd>`` / ``m:<key>:<yyyymm>``."""
        return f"{self.ns}s:{name}"

    def spend_day(self, key_id: int | None, day: str) -> str:
        return self.spend(f"d:{key_id}:{day}")

    def spend_month(self, key_id: int | None, month: str) -> str:
        return self.spend(f"m:{key_id}:{month}")

    def rate_key(self, key_id: int | None) -> str:
        return f"{self.ns}rl:k:{key_id}"

    def rate_key_listing(self, key_id: int | None, listing_id: int) -> str:
        return f"{self.ns}rl:kl:{key_id}:{listing_id}"

    def demo_visitor(self, day: str, visitor: str) -> str:
        """A visitor's demo calls on one UTC day."""
        return f"{self.ns}demo:{day}:{visitor}"

    def demo_inflight(self, listing_id: int) -> str:
        return f"{self.ns}demo:inflight:{listing_id}"

    def throttle(self, kind: str, who: str) -> str:
        """A throttle's GCRA bucket (``Meter.throttle``): ``kind`` login / login-addr /
        signup / demo / upload, ``who`` a digest of the address (and e-mail)."""
        return f"{self.ns}th:{kind}:{who}"

    def upload_bytes(self, day: str, who: str) -> str:
        """Bytes one address uploaded to the demos on one UTC day."""
        return f"{self.ns}up:{day}:{who}"
