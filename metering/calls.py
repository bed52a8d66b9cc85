"""What the gateway knows about a call before metering decides it, and the decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRIAL, PAID = "trial", "paid"
# Reserve outcomes that refuse the call, by the metric label and error they map to.
REFUSALS = {0: "credits", 3: "rate", 4: "cap_day", 5: "cap_month"}


@dataclass(slots=True)  # not frozen: built on every paid call, and frozen costs 3x (treat
class CallSpec:          # it as immutable all the same)
    """What the gateway knows about a call before it reserves."""

    request_id: str
    account_id: int
    api_key_id: int | None
    listing_id: int
    listing_version_id: int
    seller_id: int
    price: int  # micro-units per paid call
    trial_calls: int
    key_rps: float = 0  # 0: no limit
    key_burst: int = 0
    listing_rps: float = 0
    listing_burst: int = 0
    cap_day: int | None = None  # micro-units per UTC day and key
    cap_month: int | None = None
    credit_line: int = 0  # postpaid: credit may go this far below zero (micro-units)
    charge_kind: str = "paid"  # the usage event's kind when charged: paid | export


@dataclass(slots=True)  # not frozen for the same reason
class Reservation:
    """The outcome of reserve(): ``ok`` with a kind, or refused with a ``refusal`` reason."""

    call: CallSpec
    ok: bool
    kind: str  # trial | paid | "" when refused
    trial_remaining: int
    credits_remaining: int
    refusal: str = ""  # credits | rate | cap_day | cap_month
    rate_limit: int = -1  # burst of the tighter bucket; -1 when unlimited
    rate_remaining: int = -1
    rate_reset_ms: int = 0
    retry_after_ms: int = 0
    lease: Any = None  # the lease (lease.py) that decided this call in the process, if one did
    shard: int = -1  # the shard of its hold (keys.py) when not the account's (a demo visitor's)

    @property
    def cost(self) -> int:
        return self.call.price if self.kind == PAID else 0
