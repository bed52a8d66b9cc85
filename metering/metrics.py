"""Prometheus metrics for paid calls and the ledger flush."""

from prometheus_client import Counter, Gauge, Histogram

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
FLUSH_LAG = Gauge("aimarket_ledger_flush_lag_events", "Usage events not yet in the ledger")
EVENTS_FLUSHED = Counter("aimarket_ledger_events_flushed_total", "Usage events written to SQL")
