"""Pay per call at the edge (issue 18): a listing priced per edge call exports for jetson-orin
with its own receipt key; the bundle's runner counts calls into signed, chained receipts;
`aimarket kit sync` posts them to POST /v1/edge-usage, which verifies the chain and charges the
buyer exactly once (ledger kind edge, seller share + fee exact); replays, gaps, reordered and
forged receipts are refused with a clear 4xx."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text

from export import receipts
from tests.helpers import admin_token, bearer, grant, signup

pytestmark = pytest.mark.integration
PRICE = 500  # micro-units per edge call (0.0005 USD)


@pytest.fixture(scope="module")
def edge_shop(client: Any) -> dict[str, Any]:
    from storefront.demo import digits

    data, manifest = digits()
    _, seller = signup(client, "seller")
    manifest = {**manifest, "title": f"Edge-priced digits {uuid.uuid4().hex[:6]}",
                "pricing": {"per_call": "0.001", "trial_calls": 0, "export_price": "1.00",
                            "per_edge_call": "0.0005"}}
    files = {"model": ("m.onnx", data, "application/octet-stream"),
             "manifest": ("manifest.yaml", yaml.safe_dump(manifest).encode(), "application/yaml")}
    r = client.post("/v1/models", headers=bearer(seller), files=files,
                    data={"attest_rights": "true", "license": "MIT"})
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    admin = admin_token(client)
    assert client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin)).status_code == 200
    return {"slug": slug, "seller": seller, "admin": admin}


def _kit(client: Any, shop: dict[str, Any], tmp_path: Path, credit: str = "5.00"
         ) -> dict[str, Any]:
    """A buyer with the licence and an unpacked jetson-orin bundle."""
    addr, token = signup(client, "buyer")
    grant(client, addr, credit)
    assert client.post(f"/v1/models/{shop['slug']}/purchase",
                       headers=bearer(token)).status_code == 201
    r = client.post("/v1/exports", headers=bearer(token),
                    json={"slug": shop["slug"], "target": "jetson-orin"})
    assert r.status_code == 201, r.text
    blob = client.get(r.json()["download"], headers=bearer(token))
    folder = tmp_path / f"kit-{uuid.uuid4().hex[:6]}"
    zipfile.ZipFile(io.BytesIO(blob.content)).extractall(folder)
    return {"token": token, "addr": addr, "folder": folder, "license_id": r.json()["license_id"],
            "account": client.get("/v1/account", headers=bearer(token)).json()}


def _meter(folder: Path, calls: list[int]) -> list[dict[str, Any]]:
    """The runner's meter counting calls: one receipt per entry of ``calls``."""
    meter = receipts.Meter(folder, every_calls=10**9)
    for n in calls:
        meter.count(n)
        meter.close()
    return receipts.pending(folder)


def _post(client: Any, kit: dict[str, Any], batch: list[dict[str, Any]]) -> Any:
    return client.post("/v1/edge-usage", json={"license_id": kit["license_id"],
                                               "receipts": batch})


def _edge_events(client: Any, account_id: int) -> list[tuple[int, int, int]]:
    svc = client.app.state.services
    svc.flusher.drain()
    with svc.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT price, seller_share, platform_fee FROM usage_events "
            "WHERE kind = 'edge' AND account_id = :a ORDER BY price"), {"a": account_id})]


def test_the_bundle_carries_its_receipt_key_and_other_targets_refuse(client, edge_shop,
                                                                     tmp_path):
    kit = _kit(client, edge_shop, tmp_path)
    folder = kit["folder"]
    info = json.loads((folder / "edge.json").read_text())
    assert info["license_id"] == kit["license_id"] and info["per_edge_call"] == "0.0005"
    assert (folder / "receipts.py").read_bytes() == Path(receipts.__file__).read_bytes()
    assert "cryptography" in (folder / "requirements.txt").read_text()
    assert "edge-key.pem" in (folder / "SHA256SUMS").read_text()
    r = client.post("/v1/exports", headers=bearer(kit["token"]),
                    json={"slug": edge_shop["slug"], "target": "onnx"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "export_unsupported"
    assert "per edge call" in r.json()["error"]["message"]


def test_a_valid_chain_is_billed_exactly_once_and_bad_receipts_are_refused(
        client, edge_shop, tmp_path):
    kit = _kit(client, edge_shop, tmp_path)
    first = _meter(kit["folder"], [3, 4])
    assert [r["seq"] for r in first] == [1, 2] and first[1]["counter"] == 7
    r = _post(client, kit, first)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["accepted"] == 2 and got["calls"] == 7 and got["charged"] == "0.0035"
    assert got["chain"]["seq"] == 2 and got["credits"] == "3.9965"
    receipts.mark_synced(kit["folder"], 2)

    refusals = []
    # replayed: the same receipts again, or one of them
    refusals += [(first, 409, "receipt_replayed"), (first[1:], 409, "receipt_replayed")]
    more = _meter(kit["folder"], [2, 5])  # receipts 3 and 4
    refusals += [
        ([more[1]], 409, "receipt_gap"),  # receipt 3 dropped
        ([more[1], more[0]], 409, "receipt_gap"),  # reordered
    ]
    key = receipts.key_from_seed(b"\1" * 32)
    rogue = [receipts.make(key, kit["license_id"], 3, first[1]["hash"], 9, 2, "a", "b")]
    forged_count = {**more[0], "calls": 200, "counter": 207}  # more calls, same signature
    bad_sig = {**more[0], "signature": rogue[0]["signature"]}
    refusals += [(rogue, 422, "receipt_forged"), ([forged_count], 422, "receipt_forged"),
                 ([bad_sig], 422, "receipt_forged")]
    # a genuine receipt of the export's own key that does not chain onto receipt 2
    own = receipts.key_from_seed(client.app.state.services.signer.derived_key(
        "aimarket edge receipts\0" + kit["license_id"]))
    fork = receipts.make(own, kit["license_id"], 3, receipts.genesis(kit["license_id"]),
                         9, 2, "a", "b")
    refusals.append(([fork], 409, "receipt_out_of_order"))
    for batch, status, code in refusals:
        r = _post(client, kit, batch)
        assert r.status_code == status and r.json()["error"]["code"] == code, (code, r.text)
        assert "receipt" in r.json()["error"]["message"]
    assert client.get("/v1/account", headers=bearer(kit["token"])).json()["credits"] == "3.9965"

    r = _post(client, kit, more)
    assert r.status_code == 200 and r.json()["calls"] == 7 and r.json()["chain"]["seq"] == 4
    assert _edge_events(client, kit["account"]["id"]) == [(3500, 2800, 700)] * 2
    chain = client.get(f"/v1/edge-usage/{kit['license_id']}", headers=bearer(edge_shop["seller"]))
    assert chain.status_code == 200 and chain.json()["seq"] == 4
    assert chain.json()["counter"] == 14 and chain.json()["receipts"] == 4
    _, stranger = signup(client, "buyer")
    assert client.get(f"/v1/edge-usage/{kit['license_id']}",
                      headers=bearer(stranger)).status_code == 404
    for body in ({"license_id": kit["license_id"], "receipts": []}, {"receipts": more},
                 [1, 2]):
        r = client.post("/v1/edge-usage", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    r = client.post("/v1/edge-usage", json={"license_id": "nope", "receipts": more})
    assert r.status_code == 404 and r.json()["error"]["code"] == "export_not_found"


def test_no_credit_keeps_the_receipts_for_a_later_sync(client, edge_shop, tmp_path):
    kit = _kit(client, edge_shop, tmp_path, credit="1.00")  # all of it buys the licence
    batch = _meter(kit["folder"], [10])
    r = _post(client, kit, batch)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    grant(client, kit["addr"], "1.00")
    r = _post(client, kit, batch)
    assert r.status_code == 200 and r.json()["charged"] == "0.005"
    assert _edge_events(client, kit["account"]["id"]) == [(5000, 4000, 1000)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_runner_counts_calls_and_kit_sync_posts_them(client, edge_shop, tmp_path,
                                                         monkeypatch):
    from typer.testing import CliRunner

    from storefront import cli_edge
    from storefront.cli import app
    from storefront.demo import digits

    kit = _kit(client, edge_shop, tmp_path)
    folder, port = kit["folder"], _free_port()
    proc = subprocess.Popen([sys.executable, "-E", "-s", "run.py", "--port", str(port),
                             "--receipt-calls", "2"], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    image = {"image": "".join(str(digits()[1]["examples"][0]).split())}
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the runner to listen (not a timing assertion)
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/predict", json=image, timeout=10)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise AssertionError(proc.communicate()[0].decode()) from None
                time.sleep(0.1)
        assert r.status_code == 200, r.text
        for _ in range(2):
            assert httpx.post(f"http://127.0.0.1:{port}/predict", json=image,
                              timeout=10).status_code == 200
        bad = httpx.post(f"http://127.0.0.1:{port}/predict", json={"image": "eA=="}, timeout=10)
        assert bad.status_code == 422  # refused calls are not counted
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    written = receipts.pending(folder)
    assert [(r["seq"], r["calls"]) for r in written] == [(1, 2), (2, 1)]  # the last on stop

    class Shared:  # the app's TestClient stands in for the marketplace's address
        def __init__(self, **_: Any) -> None: ...
        def __enter__(self) -> Any: return client
        def __exit__(self, *_: Any) -> None: ...

    monkeypatch.setattr(cli_edge.httpx, "Client", Shared)
    out = CliRunner().invoke(app, ["kit", "sync", str(folder)])
    assert out.exit_code == 0, out.output
    assert "receipts 1..2: 3 edge calls, charged 0.0015 USD" in out.output
    out = CliRunner().invoke(app, ["kit", "sync", str(folder)])
    assert out.exit_code == 0 and "no new receipts" in out.output
    receipts.mark_synced(folder, 0)  # a lost sync state: the marketplace refuses the replay
    out = CliRunner().invoke(app, ["kit", "sync", str(folder)])
    assert out.exit_code == 1 and "receipt_replayed" in out.output
    assert _edge_events(client, kit["account"]["id"]) == [(1500, 1200, 300)]
