"""Compare Redis counters with the SQL ledger and repair drift: the ledger wins.

Redis holds, per account (in the account's shard, keys.py), spendable credit (ledger balance
minus holds of calls in flight minus charges still on the usage streams) and trial calls used
per listing. Anything else in Redis is derived, so this is the whole comparison. Every shard's
stream and holds are read (on a cluster, from each shard's primary).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster
from sqlalchemy import Engine, select

from .flusher import Flusher
from .keys import Keys
from .ledger import CreditEntry, Event, UsageEvent, balance, snapshot

# Set KEYS[1] to ARGV[2] only if it still holds ARGV[1]: never overwrite a concurrent change.
_CAS = """
if (redis.call('GET', KEYS[1]) or '0') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2]) return 1
end
return 0
"""


@dataclass(frozen=True)
class Drift:
    account_id: int
    counter: str  # "credits" or "trial:<listing id>"
    redis_value: int
    ledger_value: int
    repaired: bool



def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reconcile(client: redis.Redis | RedisCluster, engine: Engine, flusher: Flusher, *,
              namespace: str, repair: bool) -> tuple[int, list[Drift]]:
    """(accounts checked, drifts found); with ``repair`` each drift is set to the ledger's.
    Holds older than the flusher's hold timeout are refunded first, as the sweeper would."""
    flusher.drain()
    flusher.sweep()
    names = Keys(namespace)
    pending_paid: Counter[int] = Counter()
    pending_trial: Counter[tuple[int, int]] = Counter()
    for stream in flusher.streams:  # every shard's; committed after the drain
        for _id, fields in client.xrange(stream) or []:
            for e in Event.from_entry(fields or {}):
                if e.price > 0:  # a paid call or an export purchase: debited when flushed
                    pending_paid[e.account_id] += e.price
                elif e.kind == "trial":
                    pending_trial[(e.account_id, e.listing_id)] += 1
    held_paid: Counter[int] = Counter()
    held_trial: Counter[str] = Counter()
    for holds, _holdq in flusher.hold_sets:
        for meta in client.hvals(holds):
            kind, price, trial_key, credit_key, *_ = _text(meta).split("|")
            if kind == "paid":
                held_paid[int(credit_key.rsplit(":", 1)[1])] += int(price)
            elif kind == "trial":
                held_trial[trial_key] += 1
    with engine.connect() as conn:
        accounts = set(conn.execute(select(CreditEntry.account_id).distinct()).scalars())
        accounts |= set(conn.execute(select(UsageEvent.account_id).distinct()).scalars())
    cas = client.register_script(_CAS)
    drifts: list[Drift] = []
    checked = 0
    for acct in sorted(accounts):
        if not client.exists(names.marker(acct)):
            continue  # not in Redis: rebuilt from the ledger on first use
        checked += 1
        want = {names.credit(acct): balance(engine, acct) - pending_paid[acct] - held_paid[acct]}
        for lid, used in snapshot(engine, acct).trials.items():
            key = names.trial(acct, lid)
            want[key] = used + pending_trial[(acct, lid)] + held_trial[key]
        for key in client.scan_iter(names.trials_of(acct)):
            name = key.decode()
            want.setdefault(name, held_trial[name] + pending_trial[
                (acct, int(name.rsplit(":", 1)[1]))])
        for key, expected in want.items():
            raw = client.get(key)
            actual = int(raw or 0)
            if actual == expected:
                continue
            fixed = bool(repair and cas([key], [_text(raw) if raw else "0", expected]))
            counter = "credits" if key == names.credit(acct) else f"trial:{key.rsplit(':', 1)[1]}"
            drifts.append(Drift(acct, counter, actual, expected, fixed))
    return checked, drifts
