"""Prometheus metrics for paid calls and the ledger flush."""

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from .keys import Keys

CALLS = Counter("aimarket_calls_total", "Answered calls", ["listing", "kind"])
LATENCY = Histogram(
    "aimarket_call_latency_seconds", "Paid-call latency, gateway in to gateway out", ["listing"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ERRORS = Counter("aimarket_call_errors_total", "Calls answered with an error", ["code"])
REJECTIONS = Counter(
    "aimarket_rejections_total", "Calls refused by metering (rate, quota, credits, cap)",
    ["reason"],
)
RELEASED = Counter("aimarket_reservations_released_total", "Reservations given back",
                   ["why"])  # failed (the call failed) | swept (its worker died)
_ANSWERED: dict[tuple[str, str], tuple[Any, Any]] = {}


def answered(listing: str, kind: str, seconds: float) -> None:
    """Count an answered call and its latency (the labelled children are kept: ``labels``
    costs more than the count itself on the paid path)."""
    pair = _ANSWERED.get((listing, kind))
    if pair is None:
        pair = _ANSWERED[(listing, kind)] = (CALLS.labels(listing, kind), LATENCY.labels(listing))
    pair[0].inc()
    pair[1].observe(seconds)


FLUSH_LAG = Gauge("aimarket_ledger_flush_lag_events", "Usage events not yet in the ledger",
                  multiprocess_mode="mostrecent")  # set at scrape time by any worker


class _Flushed:
    """Usage events written to the ledger, counted in Redis by every flusher (they may run in
    other processes), read at scrape time by ``refresh``."""

    value = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("aimarket_ledger_events_flushed",
                                  "Usage events written to the SQL ledger", value=self.value)


EVENTS_FLUSHED = _Flushed()
REGISTRY.register(EVENTS_FLUSHED)


async def refresh(client: Any, namespace: str) -> None:
    """Read what the flushers report (lag, events written) before a scrape."""
    names = Keys(namespace)
    FLUSH_LAG.set(sum([await client.xlen(stream) for stream in names.streams]))
    EVENTS_FLUSHED.value = int(await client.get(names.flushed) or 0)
