"""Sellers change prices, descriptions and trial calls, delist and relist, through the API and
their pages, on both stacks."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers import bearer, grant, new_key, signup, v2_body
from tests.integration.test_deprecation import _publish


@pytest.fixture(scope="module")
def owned(client: Any) -> dict[str, Any]:
    addr, seller = signup(client, "seller")
    return {"slug": _publish(client, seller)["slug"], "seller": seller, "email": addr}


def _buyer_key(client: Any) -> tuple[str, dict[str, str]]:
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    return buyer, bearer(new_key(client, buyer))


def test_a_price_change_applies_to_the_next_calls_and_the_ledger_keeps_each(client, owned):
    slug, seller = owned["slug"], bearer(owned["seller"])
    buyer, key = _buyer_key(client)
    infer = f"/v2/models/{slug}/infer"
    assert client.post(infer, json=v2_body(), headers=key).headers["X-Cost"] == "0.01"
    r = client.patch(f"/v1/models/{slug}", headers=seller,
                     json={"per_call": "0.02", "kit_price": "49.00", "export_price": None,
                           "description": "Now **faster**."})
    assert r.status_code == 200, r.text
    assert (r.json()["per_call"], r.json()["kit_price"], r.json()["export_price"]) == (
        "0.02", "49.00", None)
    assert client.post(infer, json=v2_body(), headers=key).headers["X-Cost"] == "0.02"
    client.app.state.services.flusher.drain()
    assert client.get("/v1/usage", headers=bearer(buyer)).json()["total"]["spend"] == "0.03"
    detail = client.get(f"/v1/models/{slug}").json()
    assert detail["pricing"]["per_call"] == "0.02" and detail["pricing"]["export_price"] is None
    assert detail["description"] == "Now **faster**."
    r = client.post(f"/v1/models/{slug}/purchase", headers=bearer(buyer))
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_exportable"

    r = client.patch(f"/v1/models/{slug}", headers=seller, json={"trial_calls": 2})
    assert r.json()["trial_calls"] == 2
    _, fresh = _buyer_key(client)
    r = client.post(infer, json=v2_body(), headers=fresh)
    assert (r.headers["X-Cost"], r.headers["X-Trial-Remaining"]) == ("0.00", "1")

    for bad in ({"per_call": "abc"}, {"per_call": "-1"}, {"per_call": "0.0000001"},
                {"trial_calls": -1}, {"per_call": None}):
        r = client.patch(f"/v1/models/{slug}", headers=seller, json=bad)
        assert r.status_code in (409, 422) and "error" in r.json(), bad
    assert client.get(f"/v1/models/{slug}").json()["pricing"]["per_call"] == "0.02"
    _, other = signup(client, "seller")
    r = client.patch(f"/v1/models/{slug}", headers=bearer(other), json={"per_call": "0"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner"
    assert client.patch("/v1/models/nope", headers=seller, json={}).status_code == 404


def test_delist_and_relist(client, owned):
    slug, seller = owned["slug"], bearer(owned["seller"])
    _, key = _buyer_key(client)
    r = client.post(f"/v1/models/{slug}/delist", headers=seller)
    assert r.status_code == 200 and r.json()["status"] == "delisted"
    assert client.get(f"/v1/models/{slug}").status_code == 404
    assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                       headers=key).status_code == 404
    assert slug not in [i["slug"] for i in client.get(
        "/v1/models", params={"page_size": 100}).json()["items"]]
    _, other = signup(client, "seller")
    assert client.post(f"/v1/models/{slug}/relist",
                       headers=bearer(other)).status_code == 403
    assert client.post(f"/v1/models/{slug}/relist", headers=seller).json()[
        "status"] == "listed"
    assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                       headers=key).status_code == 200


def _csrf(c: Any, path: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', c.get(path).text)
    assert found is not None, path
    return found.group(1)


def test_the_seller_edits_and_delists_on_the_site(client, owned):
    slug = owned["slug"]
    client.cookies.clear()
    r = client.post("/login", data={"email": owned["email"], "password": "password-123",
                                    "csrf": _csrf(client, "/login"), "next": "/seller"},
                    follow_redirects=False)
    assert r.status_code == 303
    assert f'href="/seller/models/{slug}"' in client.get("/seller").text
    page = client.get(f"/seller/models/{slug}").text
    assert 'name="per_call"' in page and "Delist" in page
    token = _csrf(client, f"/seller/models/{slug}")
    r = client.post(f"/seller/models/{slug}", follow_redirects=False, data={
        "csrf": token, "description": "Edited <b>on the site</b>", "per_call": "0.03",
        "trial_calls": "0", "export_price": "2.50", "kit_price": ""})
    assert r.status_code == 303 and "done=" in r.headers["location"], r.headers
    detail = client.get(f"/v1/models/{slug}").json()
    assert detail["pricing"]["per_call"] == "0.03"
    assert Decimal(detail["pricing"]["export_price"]) == Decimal("2.50")
    r = client.post(f"/seller/models/{slug}", follow_redirects=False, data={
        "csrf": token, "description": "", "per_call": "lots"})
    assert "error=" in r.headers["location"]
    assert client.post(f"/seller/models/{slug}", data={"per_call": "1"}).status_code == 403
    r = client.post(f"/seller/models/{slug}/status", data={"csrf": token, "action": "delist"},
                    follow_redirects=False)
    assert r.status_code == 303 and client.get(f"/v1/models/{slug}").status_code == 404
    client.post(f"/seller/models/{slug}/status", data={"csrf": token, "action": "relist"})
    assert client.get(f"/v1/models/{slug}").status_code == 200
    client.cookies.clear()


def test_the_seller_sets_serving_options_and_publishes_a_version_on_the_site(client, owned):
    """The listing page's serving form applies to the API's view of the listing; a bad value
    comes back as the form's error and changes nothing; the new-version form uploads version
    2 of the same listing, pending review, while version 1 keeps answering."""
    import yaml

    from storefront.demo import digits

    slug, seller = owned["slug"], bearer(owned["seller"])
    client.cookies.clear()
    client.post("/login", data={"email": owned["email"], "password": "password-123",
                                "csrf": _csrf(client, "/login"), "next": "/seller"})
    page = client.get(f"/seller/models/{slug}").text
    assert 'id="serving"' in page and 'name="max_batch_size"' in page
    assert 'id="new-version"' in page and f'name="slug" value="{slug}"' in page
    token = _csrf(client, f"/seller/models/{slug}")
    r = client.post(f"/seller/models/{slug}/serving", follow_redirects=False, data={
        "csrf": token, "min_replicas": "1", "max_replicas": "2", "max_batch_size": "4",
        "batch_wait_ms": "3", "batching": "off", "backend": ""})
    assert r.status_code == 303 and "done=" in r.headers["location"], r.headers
    view = client.get(f"/v1/models/{slug}/serving", headers=seller).json()
    assert (view["max_replicas"], view["max_batch_size"], view["batch_wait_ms"],
            view["batching"]) == (2, 4, 3.0, "off")
    for bad in ({"max_replicas": "0"}, {"min_replicas": "3", "max_replicas": "2"},
                {"max_batch_size": "many"}, {"backend": "tensorflow"}):
        r = client.post(f"/seller/models/{slug}/serving", follow_redirects=False,
                        data={"csrf": token, **bad})
        assert r.status_code == 303 and "error=" in r.headers["location"], (bad, r.headers)
    assert client.get(f"/v1/models/{slug}/serving", headers=seller).json()[
        "max_replicas"] == 2
    assert client.post(f"/seller/models/{slug}/serving",
                       data={"max_replicas": "3"}).status_code == 403  # no CSRF token

    data, manifest = digits()
    manifest = {**manifest, "title": "Sunset digits",
                "pricing": {"per_call": "0.01", "trial_calls": 0}}
    r = client.post("/seller/upload", follow_redirects=False, data={
        "csrf": token, "slug": slug, "license": "MIT", "attest_rights": "true"},
        files={"model": ("m.onnx", data, "application/octet-stream"),
               "manifest": ("m.yaml", yaml.safe_dump(manifest).encode())})
    assert r.status_code == 303 and "uploaded=" in r.headers["location"], r.headers
    mine = {m["slug"]: m for m in client.get("/v1/seller/models", headers=seller).json()[
        "items"]}
    versions = {v["version"]: v["status"] for v in mine[slug]["versions"]}
    assert versions[max(versions)] == "pending_review" and versions[1] == "live", versions
    assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                       headers=_buyer_key(client)[1]).status_code == 200
    client.cookies.clear()
