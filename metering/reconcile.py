"""Compare Redis counters with the SQL ledger and repair drift: the ledger wins.

Redis holds, per account (in the account's shard, keys.py), spendable credit (ledger balance
minus holds of calls in flight minus charges still on the usage streams) and trial calls used
per listing. Anything else in Redis is derived, so this is the whole comparison.

Gateways keep serving while reconcile runs: calls reserve and commit, leases go back, other
flushers move events into the ledger. So each account is compared on one consistent cut: its
Redis side read atomically (one MULTI in its shard's slot: the shard's holds, stream and the
account's counters, so it works on a Redis Cluster too) between two reads of its
ledger rows that agree (no flush landed in between), and an event that a flusher wrote but
has not deleted from the stream yet counted once. An account whose ledger kept moving on
every pass is reported as busy, never as drift.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import redis
from redis.cluster import RedisCluster
from sqlalchemy import Engine, func, select

from .flusher import Flusher
from .keys import Keys
from .ledger import CreditEntry, Event, UsageEvent

# Set KEYS[1] to ARGV[2] only if it still holds ARGV[1]: never overwrite a concurrent change.
_CAS = """
if (redis.call('GET', KEYS[1]) or '0') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2]) return 1
end
return 0
"""
PASSES = 8  # settled views tried per account before it is reported busy
CHUNK = 200  # accounts read per atomic view


@dataclass(frozen=True)
class Drift:
    account_id: int
    counter: str  # "credits" or "trial:<listing id>"
    redis_value: int
    ledger_value: int
    repaired: bool


class Reconciled(NamedTuple):
    checked: int  # accounts compared on a settled view
    drifts: list[Drift]
    busy: list[int]  # accounts that moved on every pass: run again when traffic is quiet


@dataclass
class _Account:
    """One account's Redis side, as one atomic read saw it."""

    values: dict[str, int] = field(default_factory=dict)  # credit and trial counters
    holds: list[tuple[str, str]] = field(default_factory=list)
    pending: list[Event] = field(default_factory=list)  # on the stream, not flushed yet


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _view(client: redis.Redis | RedisCluster, names: Keys, shard: int, accounts: list[int],
          trial_keys: dict[int, list[str]], legacy: bool) -> dict[int, _Account]:
    """The Redis side of accounts of one shard in one transaction (one slot), accounts without
    a marker left out; with ``legacy`` (one server) the unsharded holds and stream too."""
    counters = [k for a in accounts for k in (names.credit(a), *trial_keys.get(a, []))]
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(names.holds(shard))
    pipe.xrange(names.stream(shard))
    if legacy:
        pipe.hgetall(names.legacy_holds[0])
        pipe.xrange(names.streams[-1])
    for a in accounts:
        pipe.exists(names.marker(a))
    for key in counters:  # GETs, not one MGET: a cluster's pipeline refuses MGET
        pipe.get(key)
    holds, entries, *rest = pipe.execute()
    if legacy:
        old_holds, old_entries, *rest = rest
        holds, entries = {**(old_holds or {}), **(holds or {})}, [*(old_entries or []),
                                                                   *(entries or [])]
    marked = dict(zip(accounts, rest[:len(accounts)], strict=True))
    values = dict(zip(counters, rest[len(accounts):], strict=True))
    view = {a: _Account() for a in accounts if marked[a]}
    for a, acc in view.items():
        for key in (names.credit(a), *trial_keys.get(a, [])):
            acc.values[key] = int(values[key] or 0)
    owner = {names.credit(a): a for a in view}
    for rid, meta in (holds or {}).items():
        kind, _price, counter, credit_key, *_ = _text(meta).split("|")
        if kind == "paid":
            acct = owner.get(credit_key)
        elif kind == "trial":
            acct = _trial_owner(names, counter)
        else:
            continue
        if acct in view:
            view[acct].holds.append((_text(rid), _text(meta)))
    for _id, fields in entries or []:
        for e in Event.from_entry(fields or {}):
            if e.account_id in view:
                view[e.account_id].pending.append(e)
    return view


def _trial_owner(names: Keys, key: str) -> int | None:
    return names.trial_owner(key)


def _ledger(engine: Engine, accounts: list[int],
            ids: list[str]) -> tuple[dict[int, tuple[int, dict[int, int]]], set[str]]:
    """Which of ``ids`` the ledger holds, then per account its balance and trial calls per
    listing. Each statement may see newer commits than the one before (read committed), so
    the ids come first: an event flushed after that read shows in the balance, and the
    caller's second read of the balance tells that something moved."""
    out: dict[int, tuple[int, dict[int, int]]] = {a: (0, {}) for a in accounts}
    found: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(ids), 500):
            found.update(conn.execute(
                select(UsageEvent.id).where(UsageEvent.id.in_(ids[i:i + 500]))).scalars())
        for acct, total in conn.execute(
                select(CreditEntry.account_id, func.coalesce(func.sum(CreditEntry.amount), 0))
                .where(CreditEntry.account_id.in_(accounts)).group_by(CreditEntry.account_id)):
            out[int(acct)] = (int(total), out[int(acct)][1])
        for acct, lid, n in conn.execute(
                select(UsageEvent.account_id, UsageEvent.listing_id, func.count())
                .where(UsageEvent.account_id.in_(accounts), UsageEvent.kind == "trial")
                .group_by(UsageEvent.account_id, UsageEvent.listing_id)):
            out[int(acct)][1][int(lid)] = int(n)
    return out, found


def _expected(names: Keys, acct: int, seen: _Account, ledger: tuple[int, dict[int, int]],
              flushed: set[str]) -> dict[str, int]:
    """What the account's counters must hold, given its Redis view and the ledger's."""
    pending_paid = 0
    pending_trial: Counter[str] = Counter()
    for e in seen.pending:
        if e.id in flushed:  # a flusher wrote it, not yet deleted it: the ledger counts it
            continue
        if e.price > 0:  # a paid call or an export purchase: debited when flushed
            pending_paid += e.price
        elif e.kind == "trial":
            pending_trial[names.trial(acct, e.listing_id)] += 1
    held_paid = 0
    held_trial: Counter[str] = Counter()
    for _rid, meta in seen.holds:
        kind, price, counter, *_ = meta.split("|")
        if kind == "paid":
            held_paid += int(price)
        else:
            held_trial[counter] += 1
    credit, trials = ledger
    want = {names.credit(acct): credit - pending_paid - held_paid}
    for lid, used in trials.items():
        key = names.trial(acct, lid)
        want[key] = used + pending_trial[key] + held_trial[key]
    for key in seen.values:
        want.setdefault(key, held_trial[key] + pending_trial[key])
    return want


def reconcile(client: redis.Redis | RedisCluster, engine: Engine, flusher: Flusher, *,
              namespace: str, repair: bool, passes: int = PASSES) -> Reconciled:
    """Compare every account; with ``repair`` each drift is set to the ledger's. Holds older
    than the flusher's hold timeout are refunded first, as the sweeper would."""
    flusher.drain()
    flusher.sweep()
    names = Keys(namespace)
    with engine.connect() as conn:
        accounts = set(conn.execute(select(CreditEntry.account_id).distinct()).scalars())
        accounts |= set(conn.execute(select(UsageEvent.account_id).distinct()).scalars())
    cas = client.register_script(_CAS)
    drifts: list[Drift] = []
    checked = 0
    todo = sorted(accounts)
    for _ in range(max(1, passes)):
        if not todo:
            break
        trial_keys: dict[int, list[str]] = defaultdict(list)
        for key in client.scan_iter(names.all_trials, count=1000):
            acct = _trial_owner(names, _text(key))
            if acct is not None:
                trial_keys[acct].append(_text(key))
        moved: list[int] = []
        by_shard: dict[int, list[int]] = defaultdict(list)
        for acct in todo:
            by_shard[names.shard(acct)].append(acct)
        chunks = [(shard, accts[i:i + CHUNK]) for shard, accts in sorted(by_shard.items())
                  for i in range(0, len(accts), CHUNK)]
        for shard, chunk in chunks:
            before, _ = _ledger(engine, chunk, [])
            view = _view(client, names, shard, chunk, trial_keys, not flusher.cluster)
            ids = [e.id for acc in view.values() for e in acc.pending]
            after, flushed = _ledger(engine, list(view), ids)
            for acct, seen in view.items():
                if after[acct] != before[acct]:  # flushed meanwhile: read it again
                    moved.append(acct)
                    continue
                checked += 1
                for key, expected in _expected(names, acct, seen, after[acct],
                                               flushed).items():
                    actual = seen.values.get(key, 0)
                    if actual == expected:
                        continue
                    fixed = bool(repair and cas([key], [str(actual), expected]))
                    counter = ("credits" if key == names.credit(acct)
                               else f"trial:{key.rsplit(':', 1)[1]}")
                    drifts.append(Drift(acct, counter, actual, expected, fixed))
        todo = moved
    return Reconciled(checked, drifts, todo)
