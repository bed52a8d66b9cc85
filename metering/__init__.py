"""Metering: trial quotas and prepaid credits on Redis, the usage stream, and the SQL ledger."""

from . import metrics
from .demo import DEMO, DemoMeter
from .flusher import Flusher
from .ledger import (
    Base,
    CreditEntry,
    Event,
    ListingCounter,
    UsageEvent,
    add_credit,
    balance,
    snapshot,
    utcnow,
    write_encoded,
    write_events,
)
from .meter import PAID, REFUSALS, TRIAL, CallSpec, Meter, Reservation, Snapshot
from .money import format_usd, split, to_micro
from .reconcile import Drift, Reconciled, reconcile

__all__ = [
    "DEMO", "PAID", "REFUSALS", "TRIAL", "Base", "CallSpec", "CreditEntry", "DemoMeter", "Drift",
    "Event", "Flusher", "ListingCounter", "Meter", "Reconciled", "Reservation", "Snapshot",
    "UsageEvent",
    "add_credit", "balance", "format_usd", "metrics", "reconcile", "snapshot", "split",
    "to_micro", "utcnow", "write_encoded", "write_events",
]
