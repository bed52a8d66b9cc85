"""Edge-call receipts (export/receipts.py) without servers: the chain a runner writes verifies;
a dropped, replayed, reordered, altered or foreign receipt is refused with its reason; a
restarted runner continues its chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export import receipts
from export.signing import Signer

LICENCE = "licence-edge-1"


@pytest.fixture
def kit(tmp_path: Path) -> tuple[Path, Signer]:
    signer = Signer(tmp_path / "platform.pem")
    key = signer.edge_key(LICENCE)
    folder = tmp_path / "kit"
    folder.mkdir()
    (folder / "edge-key.pem").write_bytes(receipts.private_pem(key))
    (folder / "edge.json").write_text(json.dumps({"license_id": LICENCE}))
    return folder, signer


def _check(signer: Signer, batch: list[dict], head: tuple[int, str, int] | None = None) -> int:
    seq, prev, counter = head or (0, receipts.genesis(LICENCE), 0)
    return receipts.check(signer.edge_key(LICENCE).public_key(), LICENCE, batch, seq, prev,
                          counter)


def test_the_runners_chain_verifies_and_resumes_after_a_restart(kit) -> None:
    folder, signer = kit
    meter = receipts.Meter(folder, every_calls=3)
    for _ in range(7):
        meter.count()
    meter.close()
    again = receipts.Meter(folder, every_calls=3)  # a restarted runner
    again.count(2)
    again.close()
    again.close()  # nothing open: no empty receipt
    chain = receipts.pending(folder)
    assert [(r["seq"], r["calls"], r["counter"]) for r in chain] == [
        (1, 3, 3), (2, 3, 6), (3, 1, 7), (4, 2, 9)]
    assert _check(signer, chain) == 9
    receipts.mark_synced(folder, 2)
    assert [r["seq"] for r in receipts.pending(folder)] == [3, 4]
    assert _check(signer, chain[2:], (2, chain[1]["hash"], 6)) == 3


def test_bad_receipts_are_refused_with_their_reason(kit) -> None:
    folder, signer = kit
    meter = receipts.Meter(folder, every_calls=1)
    for _ in range(3):
        meter.count()
    a, b, c = receipts.pending(folder)
    other = Signer(folder.parent / "other.pem").edge_key(LICENCE)
    cases = {
        "receipt_gap": [[a, c], [b]],
        "receipt_replayed": [[a, a]],
        "receipt_forged": [[{**a, "calls": 5, "counter": 5}], [{**a, "license_id": "x"}],
                           [receipts.make(other, LICENCE, 1, a["prev"], 1, 1, "s", "e")],
                           [{**a, "signature": "not base64!"}], ["junk"],
                           [{**a, "seq": True}], [{**a, "period_end": "x" * 41}]],
        "receipt_out_of_order": [
            [receipts.make(signer.edge_key(LICENCE), LICENCE, 1, "0" * 64, 1, 1, "s", "e")],
            [a, receipts.make(signer.edge_key(LICENCE), LICENCE, 2, a["hash"], 7, 1, "s",
                              "e")]],
    }
    for code, batches in cases.items():
        for batch in batches:
            with pytest.raises(receipts.Refused) as err:
                _check(signer, batch)
            assert err.value.code == code, (code, err.value.message)
    with pytest.raises(receipts.Refused) as err:
        _check(signer, [a], (1, a["hash"], 1))
    assert err.value.code == "receipt_replayed" and err.value.seq == 1
