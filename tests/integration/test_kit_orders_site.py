"""Ordering a Nano Kit (issue 17): the shipping address's rules (an ISO 3166-1 country, lines
stripped, no control characters) on the API and on the buyer dashboard's form, where a refused
order charges nothing and says why, and a placed one shows with its state and history."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers import admin_token, bearer, grant, signup

ADDRESS = {"name": "Bea", "line1": "1 Main St", "city": "Lyon", "postal_code": "69001",
           "country": "FR"}


def _buyer_with_a_kit_bundle(client: Any, credits: str) -> tuple[str, str, dict[str, Any]]:
    """(e-mail, token, nano-kit export) of a buyer holding iris-species' licence (5.00 USD)."""
    email, token = signup(client, "buyer")
    grant(client, email, credits)
    assert client.post("/v1/models/iris-species/purchase",
                       headers=bearer(token)).status_code == 201
    r = client.post("/v1/exports", headers=bearer(token),
                    json={"slug": "iris-species", "target": "nano-kit"})
    assert r.status_code == 201, r.text
    return email, token, r.json()


def _credits(client: Any, token: str) -> str:
    return str(client.get("/v1/account", headers=bearer(token)).json()["credits"])


def _orders(client: Any, token: str) -> list[dict[str, Any]]:
    return list(client.get("/v1/kit-orders", headers=bearer(token)).json()["items"])


class Site:
    """A browser's session: the session cookie, a CSRF nonce cookie and its form token."""

    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        nonce = uuid.uuid4().hex
        self.cookie = f"am_csrf={nonce}; am_session={token}"
        key = client.app.state.services.signing_key
        self.csrf = hmac.new(key.encode(), f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()

    def get(self, path: str) -> Any:
        self.client.cookies.clear()
        return self.client.get(path, headers={"Cookie": self.cookie})

    def post(self, path: str, form: dict[str, str], csrf: bool = True) -> Any:
        self.client.cookies.clear()
        data = {**form, **({"csrf": self.csrf} if csrf else {})}
        return self.client.post(path, data=data, headers={"Cookie": self.cookie},
                                follow_redirects=False)

    def flash(self, response: Any) -> dict[str, str]:
        """The redirect's flash (error= or done=), as the page shows it."""
        assert response.status_code == 303, response.text
        query = parse_qs(urlsplit(response.headers["location"]).query)
        return {k: v[0] for k, v in query.items()}


@pytest.mark.parametrize("country", ["ZZ", "XX", "F1", "É1", "UK", "12"])
def test_an_unknown_country_is_a_422_naming_the_field_and_charges_nothing(client, country):
    _, token, exp = _buyer_with_a_kit_bundle(client, "50.00")
    before = _credits(client, token)
    r = client.post("/v1/kit-orders", headers=bearer(token), json={
        "export_id": exp["id"], "shipping_address": {**ADDRESS, "country": country}})
    assert r.status_code == 422, r.text
    fields = [p["field"] for p in r.json()["error"]["details"]]
    assert fields == ["shipping_address.country"]
    assert "ISO 3166-1" in r.json()["error"]["message"]
    assert _orders(client, token) == [] and _credits(client, token) == before


def test_the_address_is_normalized_and_control_characters_are_refused(client):
    _, token, exp = _buyer_with_a_kit_bundle(client, "50.00")
    for field, value in (("name", "Bea\nEvil: header"), ("line1", "1 Main\x00 St"),
                         ("city", "Ly\u202eon"), ("postal_code", "69\t001"),
                         ("name", "   ")):
        r = client.post("/v1/kit-orders", headers=bearer(token), json={
            "export_id": exp["id"], "shipping_address": {**ADDRESS, field: value}})
        assert r.status_code == 422, (field, r.text)
        assert [p["field"] for p in r.json()["error"]["details"]] == [
            f"shipping_address.{field}"]
    assert _orders(client, token) == []
    r = client.post("/v1/kit-orders", headers=bearer(token), json={
        "export_id": exp["id"], "shipping_address": {
            **ADDRESS, "name": "  Bea Lune ", "postal_code": " 69001\n", "country": "fr"}})
    assert r.status_code == 201, r.text
    assert r.json()["shipping_address"] == {**ADDRESS, "name": "Bea Lune", "line2": ""}


def test_an_admin_cannot_order_a_kit_on_a_buyers_bundle(client):
    _, token, exp = _buyer_with_a_kit_bundle(client, "10.00")
    r = client.post("/v1/kit-orders", headers=bearer(admin_token(client)),
                    json={"export_id": exp["id"], "shipping_address": ADDRESS})
    assert r.status_code == 404 and r.json()["error"]["code"] == "export_not_found"


def test_a_buyer_orders_a_kit_on_the_dashboard_and_follows_it(client):
    email, token, exp = _buyer_with_a_kit_bundle(client, "50.00")
    site = Site(client, token)
    page = site.get("/account").text
    action = f"/account/exports/{exp['id']}/kit-order"
    assert f'action="{action}"' in page and "Order a Nano Kit (39.00 USD)" in page
    assert '<option value="FR">France</option>' in page

    # no CSRF token: refused, nothing ordered
    assert site.post(action, ADDRESS, csrf=False).status_code == 403
    # a bad country: back on the page with the field named, nothing charged
    flash = site.flash(site.post(action, {**ADDRESS, "country": "ZZ"}))
    assert "country" in flash["error"] and "ISO 3166-1" in flash["error"]
    shown = site.get("/account?error=" + flash["error"]).text
    assert "ISO 3166-1" in shown and 'role="alert"' in shown
    assert _orders(client, token) == [] and _credits(client, token) == "45.00"

    hostile = "<b>Bea</b> <script>x()</script>"
    flash = site.flash(site.post(action, {**ADDRESS, "name": hostile, "line2": "Bât. B"}))
    assert "39.00" in flash["done"] and "6.00" in flash["done"], flash
    assert _credits(client, token) == "6.00"
    (order,) = _orders(client, token)
    assert order["state"] == "pending" and order["shipping_address"]["name"] == hostile

    admin = bearer(admin_token(client))
    client.post(f"/v1/admin/kit-orders/{order['id']}/advance", headers=admin,
                json={"state": "flashed"})
    client.post(f"/v1/admin/kit-orders/{order['id']}/advance", headers=admin,
                json={"state": "shipped", "tracking": "1Z-DASH-42"})
    page = site.get("/account").text
    row = re.search(r"<tr><td>#" + str(order["id"]) + r"</td>.*?</tr>", page, re.S)
    assert row is not None
    assert "<td>shipped</td><td>1Z-DASH-42</td>" in row.group(0)
    assert "&lt;b&gt;Bea&lt;/b&gt; &lt;script&gt;" in row.group(0) and hostile not in page
    assert [s for s in re.findall(r"<li>(\w+) ", row.group(0))] == [
        "pending", "flashed", "shipped"]
    assert "tracking 1Z-DASH-42" in row.group(0)
    assert "admin@test.local" not in row.group(0)


def test_insufficient_credits_are_said_on_the_page_and_leave_no_order(client):
    _, token, exp = _buyer_with_a_kit_bundle(client, "10.00")
    site = Site(client, token)
    flash = site.flash(site.post(f"/account/exports/{exp['id']}/kit-order", ADDRESS))
    assert flash["error"] == "a Nano Kit costs 39.00 USD and your credits are 5.00 USD"
    assert _orders(client, token) == [] and _credits(client, token) == "5.00"
    page = site.get("/account?error=" + flash["error"]).text
    assert "a Nano Kit costs 39.00 USD and your credits are 5.00 USD" in page


def test_no_form_for_bundles_that_offer_no_kit_nor_for_other_buyers(client):
    email, token, exp = _buyer_with_a_kit_bundle(client, "30.00")
    assert client.post("/v1/models/wine-cultivar/purchase",
                       headers=bearer(token)).status_code == 201  # wine offers no kit
    wine = client.post("/v1/exports", headers=bearer(token),
                       json={"slug": "wine-cultivar", "target": "nano-kit"}).json()
    onnx = client.post("/v1/exports", headers=bearer(token),
                       json={"slug": "iris-species", "target": "onnx"}).json()
    site = Site(client, token)
    page = site.get("/account").text
    assert page.count('class="kit-form"') == 1 and f"kit-{exp['id']}" in page
    for other in (wine, onnx):
        assert f"/account/exports/{other['id']}/kit-order" not in page
    flash = site.flash(site.post(f"/account/exports/{wine['id']}/kit-order", ADDRESS))
    assert "not offered as a Nano Kit" in flash["error"]
    flash = site.flash(site.post(f"/account/exports/{onnx['id']}/kit-order", ADDRESS))
    assert "nano-kit export" in flash["error"]

    _, stranger = signup(client, "buyer")
    theirs = Site(client, stranger)
    assert f"kit-{exp['id']}" not in theirs.get("/account").text
    flash = theirs.flash(theirs.post(f"/account/exports/{exp['id']}/kit-order", ADDRESS))
    assert "no export" in flash["error"]
    assert _orders(client, token) == [] and _orders(client, stranger) == []
