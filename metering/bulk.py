"""The flusher's bulk write: usage events, their credit debits and the listings' call counters,
in one transaction, exactly once.

Events arrive as the stream's encoded text (``Event.encode``: twelve ``|``-separated fields)
and go into a per-connection staging table without a Python object per event: COPY of the raw
text on PostgreSQL, one ``executemany`` of the split fields on SQLite. From the staging table
set-based statements insert the events (a duplicate event id is ignored), debit each account
once per write by the sum of its *new* paid events (one credit row per account, not per call:
half the indexed inserts; its reference names the account's first new event, so it is unique)
and add the *new* calls to ``listing_counters`` per listing, so the debits and the counter
equal the ledger's event rows whatever is redelivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

if TYPE_CHECKING:
    from .ledger import Event

FIELDS = 12  # Event's fields, in Event.encode's order
# What a listing's calls_served counts (exports and kit orders are purchases, not calls).
CALL_KINDS = ("trial", "paid", "demo")
_KINDS_SQL = ", ".join(f"'{k}'" for k in CALL_KINDS)
_STAGE_COLS = ("id, account_id, api_key_id, listing_id, listing_version_id, seller_id, kind, "
               "price, seller_share, platform_fee, latency_us, ts_ms")
_EVENT_COLS = ("id, account_id, api_key_id, listing_id, listing_version_id, seller_id, kind, "
               "price, seller_share, platform_fee, latency_us, created_at, flushed_at")


def write_events(engine: Engine, events: Iterable[Event]) -> int:
    """Write usage events and their credit debits in one transaction; duplicates are ignored.
    Returns how many events were new. Safe to call again with the same events."""
    return write_encoded(engine, [e.encode() for e in events])


def write_encoded(engine: Engine, payloads: Sequence[str]) -> int:
    """:func:`write_events` for events still in their stream encoding (the flusher's path)."""
    if not payloads:
        return 0
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            return _postgres(conn, payloads)
        return _sqlite(conn, payloads)


# -- PostgreSQL: COPY the encoded text as it came, then three set-based statements in one.

_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_inbox (id varchar(64), account_id integer, "
    "api_key_id integer, listing_id integer, listing_version_id integer, seller_id integer, "
    "kind varchar(16), price bigint, seller_share bigint, platform_fee bigint, "
    "latency_us integer, ts_ms bigint) ON COMMIT DELETE ROWS"
)
_PG_WRITE = f"""
WITH new AS (
  INSERT INTO usage_events ({_EVENT_COLS})
  SELECT id, account_id, api_key_id, listing_id, listing_version_id, seller_id, kind, price,
         seller_share, platform_fee, latency_us,
         timestamptz 'epoch' + ts_ms * interval '1 millisecond', now()
  FROM usage_inbox
  ON CONFLICT (id) DO NOTHING
  RETURNING id, account_id, listing_id, kind, price, created_at
), debits AS (
  INSERT INTO credit_entries (account_id, amount, reason, reference, note, created_at)
  SELECT account_id, -sum(price), 'usage', 'usage:' || min(id), '', max(created_at)
  FROM new WHERE price > 0 GROUP BY account_id ORDER BY account_id
), counted AS (
  INSERT INTO listing_counters (listing_id, calls_served)
  SELECT listing_id, count(*) FROM new WHERE kind IN ({_KINDS_SQL})
  GROUP BY listing_id ORDER BY listing_id
  ON CONFLICT (listing_id) DO UPDATE
  SET calls_served = listing_counters.calls_served + EXCLUDED.calls_served
)
SELECT count(*) FROM new
"""


def _postgres(conn: Connection, payloads: Sequence[str]) -> int:
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cur.execute(_PG_STAGE)
    blob = "\n".join(payloads)
    # The encoding has no quoting: text that CSV would read differently takes the slow path.
    plain = '"' not in blob and "\r" not in blob and blob.count("\n") == len(payloads) - 1
    with cur.copy(f"COPY usage_inbox ({_STAGE_COLS}) FROM STDIN "
                  "WITH (FORMAT csv, DELIMITER '|')" if plain else
                  f"COPY usage_inbox ({_STAGE_COLS}) FROM STDIN") as copy:
        if plain:
            copy.write(blob)
        else:
            for fields in _split(payloads):
                copy.write_row([None if f == "" else f for f in fields])
    cur.execute(_PG_WRITE)
    row = cur.fetchone()  # the staged rows go at commit (ON COMMIT DELETE ROWS) or rollback
    return int(row[0]) if row else 0


# -- SQLite: executemany of the split text into a TEMP table; SQLite's integer affinity turns
# the digits into integers, and a check refuses anything that is not one.

_LITE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_inbox (id TEXT, account_id INTEGER, "
    "api_key_id INTEGER, listing_id INTEGER, listing_version_id INTEGER, seller_id INTEGER, "
    "kind TEXT, price INTEGER, seller_share INTEGER, platform_fee INTEGER, "
    "latency_us INTEGER, ts_ms INTEGER)"
)
_INTS = ("account_id", "listing_id", "listing_version_id", "seller_id", "price",
         "seller_share", "platform_fee", "latency_us", "ts_ms")
_LITE_BAD = ("SELECT count(*) FROM temp.usage_inbox WHERE NOT ("
             + " AND ".join(f"typeof({c}) = 'integer'" for c in _INTS)
             + " AND (api_key_id = '' OR typeof(api_key_id) = 'integer'))")
# SQLAlchemy's storage format for DateTime on SQLite, exact to the millisecond.
_LITE_TS = ("strftime('%Y-%m-%d %H:%M:%S', ts_ms / 1000, 'unixepoch') "
            "|| printf('.%03d000', ts_ms % 1000)")
_LITE_COUNT = f"""
INSERT INTO listing_counters (listing_id, calls_served)
SELECT listing_id, count(*) FROM temp.usage_inbox AS i
WHERE kind IN ({_KINDS_SQL}) AND NOT EXISTS (SELECT 1 FROM usage_events u WHERE u.id = i.id)
GROUP BY listing_id ORDER BY listing_id
ON CONFLICT (listing_id) DO UPDATE SET calls_served = calls_served + excluded.calls_served
"""
_LITE_EVENTS = f"""
INSERT OR IGNORE INTO usage_events ({_EVENT_COLS})
SELECT id, account_id, NULLIF(api_key_id, ''), listing_id, listing_version_id, seller_id, kind,
       price, seller_share, platform_fee, latency_us, {_LITE_TS}, ?
FROM temp.usage_inbox
"""
_LITE_DEBITS = f"""
INSERT INTO credit_entries (account_id, amount, reason, reference, note, created_at)
SELECT account_id, -sum(price), 'usage', 'usage:' || min(id), '', max({_LITE_TS})
FROM temp.usage_inbox AS i
WHERE price > 0 AND NOT EXISTS (SELECT 1 FROM usage_events u WHERE u.id = i.id)
GROUP BY account_id ORDER BY account_id
"""


def _sqlite(conn: Connection, payloads: Sequence[str]) -> int:
    from .ledger import utcnow

    # One row per event id: the counter statement counts rows not yet in the ledger.
    rows = {f[0]: f for f in _split(payloads)}.values()
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cur.execute(_LITE_STAGE)
    cur.execute("DELETE FROM temp.usage_inbox")
    cur.executemany(f"INSERT INTO temp.usage_inbox VALUES ({', '.join('?' * FIELDS)})", rows)
    if cur.execute(_LITE_BAD).fetchone()[0]:
        raise ValueError("a usage event on the stream has a field that is not an integer")
    # Counted before the insert, in the same write transaction: exactly the new events.
    cur.execute(_LITE_COUNT)
    cur.execute(_LITE_DEBITS)
    flushed = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    new = cur.execute(_LITE_EVENTS, (flushed,)).rowcount
    cur.execute("DELETE FROM temp.usage_inbox")
    return int(new)


def _split(payloads: Iterable[str]) -> Iterable[list[str]]:
    for p in payloads:
        fields = p.split("|")
        if len(fields) != FIELDS:
            raise ValueError(f"a usage event on the stream has {len(fields)} fields, "
                             f"not {FIELDS}")
        yield fields


def payloads(messages: Iterable[tuple[Any, Any]]) -> list[str]:
    """The encoded events of stream messages: one ``e`` field each, or a leased group
    commit's ``b`` field (lease.py), one encoded event per line. ``fields`` is a dict, or the
    flat list of names and values the server sent."""
    out: list[str] = []
    for _mid, fields in messages:
        if not isinstance(fields, dict):
            fields = {fields[0]: fields[1]} if len(fields) == 2 else dict(
                zip(fields[::2], fields[1::2], strict=True))
        packed = fields.get(b"b", fields.get("b"))
        if packed is not None:
            out.extend((packed.decode() if isinstance(packed, bytes) else str(packed))
                       .split("\n"))
            continue
        value = fields.get(b"e", fields.get("e"))
        out.append(value.decode() if isinstance(value, bytes) else str(value))
    return out
