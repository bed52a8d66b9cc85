"""Edge-call usage receipts: what a kit's runner writes and the marketplace verifies.

This file is shipped into kit bundles as ``receipts.py`` and imported by the marketplace as
``export.receipts``: the runner and the verifier run the same code. It needs only the standard
library and ``cryptography`` (no package-relative imports).

A receipt covers the calls a runner served since the previous one::

    {"v": 1, "license_id", "seq": 1, 2, ..., "period_start", "period_end" (UTC, ISO 8601),
     "calls": calls in the period, "counter": calls since the export was built,
     "prev": the previous receipt's hash (the licence's genesis hash for seq 1),
     "hash": sha256 of the canonical JSON of the fields above,
     "signature": Ed25519 over that JSON, by the export's own key (edge-key.pem in the bundle)}

The sequence, the cumulative counter and the hash chain make a dropped, replayed, reordered or
altered receipt visible: the marketplace accepts receipt n only right after receipt n - 1.
What receipts cannot prove: that the runner counted every call. A buyer who patches the
runner (or the model out of the bundle) can under-report; a kit that stops sending receipts
shows as a chain that stops, which the seller sees.
"""

import base64
import hashlib
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

VERSION = 1
FIELDS = ("v", "license_id", "seq", "period_start", "period_end", "calls", "counter", "prev")
MAX_CALLS = 10**12  # per receipt: a bound on what one receipt may claim


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def genesis(license_id):
    """The ``prev`` of a licence's first receipt."""
    return hashlib.sha256(b"aimarket edge receipts\0" + license_id.encode()).hexdigest()


def key_from_seed(seed):
    return Ed25519PrivateKey.from_private_bytes(seed)


def private_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_raw(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def make(key, license_id, seq, prev, counter, calls, start, end):
    """A signed receipt (``key`` an Ed25519PrivateKey)."""
    body = {"v": VERSION, "license_id": license_id, "seq": seq, "period_start": start,
            "period_end": end, "calls": calls, "counter": counter, "prev": prev}
    data = canonical(body)
    return {**body, "hash": hashlib.sha256(data).hexdigest(),
            "signature": base64.b64encode(key.sign(data)).decode()}


class Refused(Exception):
    """A receipt the marketplace does not accept: ``code`` says why, ``seq`` which one."""

    def __init__(self, code, message, seq=None):
        super().__init__(message)
        self.code, self.message, self.seq = code, message, seq


def check(public_key, license_id, receipts, head_seq, head_hash, head_counter):
    """Verify a batch against the chain's head (seq 0, genesis hash, counter 0 when empty):
    every receipt genuine (signature, hash, licence) and the next one of the chain. Returns
    the total calls; raises Refused (codes ``receipt_forged``, ``receipt_replayed``,
    ``receipt_gap``, ``receipt_out_of_order``) for the first one that is not."""
    if not isinstance(public_key, Ed25519PublicKey):
        public_key = Ed25519PublicKey.from_public_bytes(public_key)
    total = 0
    seq, prev, counter = head_seq, head_hash, head_counter
    for r in receipts:
        body = _genuine(public_key, license_id, r)
        n = body["seq"]
        if n <= seq:
            raise Refused("receipt_replayed",
                          f"receipt {n} was already accepted (the chain is at receipt {seq}); "
                          "send only newer receipts", n)
        if n > seq + 1:
            raise Refused("receipt_gap",
                          f"receipt {n} does not follow receipt {seq}: receipts "
                          f"{seq + 1}..{n - 1} are missing; send every receipt, in order", n)
        if body["prev"] != prev:
            raise Refused("receipt_out_of_order",
                          f"receipt {n} does not chain onto receipt {seq} (its prev hash "
                          "differs): it belongs to another chain", n)
        if body["counter"] != counter + body["calls"]:
            raise Refused("receipt_out_of_order",
                          f"receipt {n} counts {body['counter']} calls in all, but receipt "
                          f"{seq} left the counter at {counter} and it adds {body['calls']}",
                          n)
        seq, prev, counter = n, r["hash"], body["counter"]
        total += body["calls"]
    return total


def _genuine(public_key, license_id, r):
    if not isinstance(r, dict):
        raise Refused("receipt_forged", "a receipt is a JSON object")
    body: dict = {k: r.get(k) for k in FIELDS}
    seq = body["seq"] if isinstance(body["seq"], int) else None
    ints_ok = all(isinstance(body[k], int) and not isinstance(body[k], bool)
                  for k in ("v", "seq", "calls", "counter"))
    if not ints_ok or body["v"] != VERSION or body["seq"] < 1 or not (
            1 <= body["calls"] <= MAX_CALLS) or not all(
            isinstance(body[k], str) for k in ("license_id", "period_start", "period_end",
                                                "prev")) or max(
            len(body["period_start"]), len(body["period_end"])) > 40 or len(body["prev"]) != 64:
        raise Refused("receipt_forged", "the receipt's fields are missing or malformed", seq)
    if body["license_id"] != license_id:
        raise Refused("receipt_forged", f"receipt {seq} is for another licence", seq)
    data = canonical(body)
    if r.get("hash") != hashlib.sha256(data).hexdigest():
        raise Refused("receipt_forged", f"receipt {seq}'s hash does not match its fields", seq)
    try:
        public_key.verify(base64.b64decode(str(r.get("signature", "")), validate=True), data)
    except (InvalidSignature, ValueError):
        raise Refused("receipt_forged",
                      f"receipt {seq}'s signature is not this export's key's", seq) from None
    return body


def _now():
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()  # noqa: UP017 (3.10)


class Meter:
    """The runner's counter: counts served calls and closes a receipt every ``every_calls``
    calls or ``every_seconds`` seconds (and on ``close()``). Receipts land one file each in
    ``folder/usage/receipts/`` (written atomically, then the state); ``aimarket kit sync``
    posts them. Calls not yet in a receipt are lost if the runner dies (never over-counted)."""

    def __init__(self, folder, every_calls=1000, every_seconds=3600.0):
        folder = Path(folder)
        info = json.loads((folder / "edge.json").read_text())
        self.license_id = info["license_id"]
        self.key = serialization.load_pem_private_key((folder / "edge-key.pem").read_bytes(),
                                                      password=None)
        self.dir = folder / "usage" / "receipts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.every_calls, self.every_seconds = every_calls, every_seconds
        self.lock = threading.Lock()
        self.seq, self.prev, self.counter = 0, genesis(self.license_id), 0
        for path in sorted(self.dir.glob("*.json")):  # resume the chain where it stopped
            r = json.loads(path.read_text())
            if r["seq"] > self.seq:
                self.seq, self.prev, self.counter = r["seq"], r["hash"], r["counter"]
        self.open_calls, self.open_since, self.opened = 0, _now(), time.monotonic()

    def count(self, calls=1):
        with self.lock:
            self.open_calls += calls
            if (self.open_calls >= self.every_calls
                    or time.monotonic() - self.opened >= self.every_seconds):
                self._close()

    def close(self):
        """Write the open period's receipt (if it holds calls)."""
        with self.lock:
            self._close()

    def _close(self):
        if self.open_calls == 0:
            return
        end = _now()
        r = make(self.key, self.license_id, self.seq + 1, self.prev,
                 self.counter + self.open_calls, self.open_calls, self.open_since, end)
        path = self.dir / f"{r['seq']:010d}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(canonical(r))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.seq, self.prev, self.counter = r["seq"], r["hash"], r["counter"]
        self.open_calls, self.open_since, self.opened = 0, end, time.monotonic()


def pending(folder):
    """The receipts in ``folder`` not yet accepted by the marketplace, in order."""
    folder = Path(folder)
    synced_path = folder / "usage" / "synced.json"
    synced = json.loads(synced_path.read_text())["seq"] if synced_path.exists() else 0
    out = [json.loads(p.read_text()) for p in sorted((folder / "usage" / "receipts")
                                                       .glob("*.json"))]
    return [r for r in out if r["seq"] > synced]


def mark_synced(folder, seq):
    path = Path(folder) / "usage" / "synced.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": seq}))
    os.replace(tmp, path)
