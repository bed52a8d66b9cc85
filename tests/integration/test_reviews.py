"""Ratings and reviews through the API and the pages, on both stacks: verified buyers only,
one per buyer and listing, the seller's single reply, an admin's hiding, the catalog's rating."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
import yaml

from tests.helpers import admin_token, bearer, grant, new_key, signup, v2_body


@pytest.fixture(scope="module")
def listing(client: Any) -> dict[str, Any]:
    """A fresh listing (no trial calls, an export price) with its seller's token."""
    from storefront.demo import digits

    data, manifest = digits()
    manifest = {**manifest, "title": "Reviewed digits",
                "pricing": {"per_call": "0.01", "trial_calls": 1, "export_price": "1.00"}}
    _, seller = signup(client, "seller")
    r = client.post("/v1/models", headers=bearer(seller),
                    files={"model": ("m.onnx", data, "application/octet-stream"),
                           "manifest": ("m.yaml", yaml.safe_dump(manifest).encode())},
                    data={"attest_rights": "true", "license": "MIT"})
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    assert client.post(f"/v1/admin/models/{slug}/approve",
                       headers=bearer(admin_token(client))).status_code == 200
    return {"slug": slug, "seller": seller}


def paying_buyer(client: Any, slug: str, paid_calls: int = 1) -> str:
    """A buyer who used the trial call and made ``paid_calls`` paid calls (flushed)."""
    addr, token = signup(client, "buyer")
    grant(client, addr, "1.00")
    key = new_key(client, token)
    for _ in range(1 + paid_calls):
        r = client.post(f"/v2/models/{slug}/infer", json=v2_body(), headers=bearer(key))
        assert r.status_code == 200, r.text
    client.app.state.services.flusher.drain()
    return token


def code_of(r: Any) -> str:
    return str(r.json()["error"]["code"])


def test_only_verified_buyers_review_once_each_and_may_edit(client, listing):
    slug = listing["slug"]
    _, stranger = signup(client, "buyer")
    r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(stranger),
                    json={"stars": 5, "text": "great"})
    assert r.status_code == 403 and code_of(r) == "not_a_verified_buyer"
    trial_only = paying_buyer(client, slug, paid_calls=0)  # a trial call is not a purchase
    r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(trial_only),
                    json={"stars": 5, "text": "great"})
    assert r.status_code == 403 and code_of(r) == "not_a_verified_buyer"
    assert client.post(f"/v1/models/{slug}/reviews", json={"stars": 5}).status_code == 401

    buyer = paying_buyer(client, slug)
    for bad in ({"stars": 0}, {"stars": 6}, {"stars": "x"}, {"text": "no stars"},
                {"stars": 3, "text": "x" * 4001}):
        r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer), json=bad)
        assert r.status_code == 422 and "error" in r.json(), bad
    r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                    json={"stars": 2, "text": "slow"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["stars"], first["text"], first["edited"], first["reply"]) == (
        2, "slow", False, None)
    r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                    json={"stars": 4, "text": "better now"})
    assert r.status_code == 200 and r.json()["id"] == first["id"] and r.json()["edited"]

    other = paying_buyer(client, slug, paid_calls=2)
    assert client.post(f"/v1/models/{slug}/reviews", headers=bearer(other),
                       json={"stars": 5}).status_code == 201
    listed = client.get(f"/v1/models/{slug}/reviews").json()
    assert [i["stars"] for i in listed["items"]] == [5, 4]  # newest first, one per buyer
    assert listed["rating"] == {"average": 4.5, "count": 2}
    assert client.get(f"/v1/models/{slug}").json()["rating"] == {"average": 4.5, "count": 2}
    cards = client.get("/v1/models", params={"q": "Reviewed digits"}).json()["items"]
    assert cards[0]["rating"] == {"average": 4.5, "count": 2}
    assert client.get("/v1/models/nope/reviews").status_code == 404


def test_a_purchase_verifies_a_buyer(client, listing):
    slug = listing["slug"]
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "5.00")
    assert client.post(f"/v1/models/{slug}/purchase", headers=bearer(buyer)).status_code == 201
    r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                    json={"stars": 3, "text": "bought the export"})
    assert r.status_code == 201, r.text


def test_the_seller_replies_once_and_an_admin_hides_into_the_audit_log(client, listing):
    slug = listing["slug"]
    buyer = paying_buyer(client, slug)
    review = client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                         json={"stars": 1, "text": "spam spam"}).json()
    before = client.get(f"/v1/models/{slug}").json()["rating"]
    path = f"/v1/models/{slug}/reviews/{review['id']}/reply"
    _, other_seller = signup(client, "seller")
    r = client.post(path, headers=bearer(other_seller), json={"text": "hi"})
    assert r.status_code == 403 and code_of(r) == "not_owner"
    assert client.post(path, headers=bearer(buyer), json={"text": "me"}).status_code == 403
    r = client.post(path, headers=bearer(listing["seller"]), json={"text": "Sorry! Fixed."})
    assert r.status_code == 201 and r.json()["reply"]["text"] == "Sorry! Fixed."
    r = client.post(path, headers=bearer(listing["seller"]), json={"text": "again"})
    assert r.status_code == 409 and code_of(r) == "already_replied"
    assert client.post(f"/v1/models/{slug}/reviews/999999/reply",
                       headers=bearer(listing["seller"]), json={"text": "x"}).status_code == 404

    hide = f"/v1/admin/reviews/{review['id']}/hide"
    assert client.post(hide, headers=bearer(buyer)).status_code == 403
    admin = admin_token(client)
    r = client.post(hide, headers=bearer(admin), json={"reason": "spam"})
    assert r.status_code == 200 and r.json()["hidden"] is True
    assert client.post("/v1/admin/reviews/999999/hide", headers=bearer(admin)).status_code == 404
    shown = client.get(f"/v1/models/{slug}/reviews").json()
    assert review["id"] not in [i["id"] for i in shown["items"]]
    after = client.get(f"/v1/models/{slug}").json()["rating"]
    assert after["count"] == before["count"] - 1
    log = client.get("/v1/admin/audit-log", headers=bearer(admin)).json()["items"]
    assert any(e["decision"] == "hide_review" and e["slug"] == slug
               and f"review {review['id']}: spam" == e["reason"] for e in log)


def test_sort_by_rating_puts_the_best_rated_first(client, listing):
    slug = listing["slug"]
    buyer = paying_buyer(client, slug)
    client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer), json={"stars": 5})
    items = client.get("/v1/models", params={"sort": "rating", "page_size": 100}).json()["items"]
    rated = [i["rating"]["average"] or 0 for i in items]
    assert rated == sorted(rated, reverse=True)
    assert slug in [i["slug"] for i in items if i["rating"]["count"]]
    assert client.get("/v1/models", params={"sort": "stars"}).status_code == 422


def _csrf(c: Any, path: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', c.get(path).text)
    assert found is not None
    return found.group(1)


def test_the_model_page_shows_reviews_escaped_and_takes_the_form(client, listing):
    slug = listing["slug"]
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    buyer = paying_buyer(client, slug)
    client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                json={"stars": 4, "text": hostile})
    client.cookies.clear()
    text = client.get(f"/models/{slug}").text
    assert hostile not in text and html.escape(hostile, quote=False) in text.replace(
        "&#34;", '"')
    assert "No reviews yet" not in text and 'id="reviews"' in text

    addr, _ = signup(client, "buyer")  # not a verified buyer: no form, a note
    r = client.post("/login", data={"email": addr, "password": "password-123",
                                    "csrf": _csrf(client, "/login"), "next": "/"},
                    follow_redirects=False)
    assert r.status_code == 303
    page = client.get(f"/models/{slug}").text
    assert "review-form" not in page and "verified buyers" in page
    r = client.post(f"/models/{slug}/reviews", follow_redirects=False,
                    data={"stars": "5", "text": "x", "csrf": _csrf(client, f"/models/{slug}")})
    assert r.status_code == 303 and "error=" in r.headers["location"]
    assert client.post(f"/models/{slug}/reviews", data={"stars": "5"}).status_code == 403
    client.cookies.clear()


def test_hiding_the_only_review_leaves_no_rating(client, listing):
    from storefront.demo import digits

    data, manifest = digits()
    manifest = {**manifest, "title": "Lonely digits",
                "pricing": {"per_call": "0.01", "trial_calls": 0}}
    _, seller = signup(client, "seller")
    r = client.post("/v1/models", headers=bearer(seller),
                    files={"model": ("m.onnx", data, "application/octet-stream"),
                           "manifest": ("m.yaml", yaml.safe_dump(manifest).encode())},
                    data={"attest_rights": "true", "license": "MIT"})
    slug = r.json()["slug"]
    admin = bearer(admin_token(client))
    assert client.post(f"/v1/admin/models/{slug}/approve", headers=admin).status_code == 200
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    key = new_key(client, buyer)
    assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                       headers=bearer(key)).status_code == 200
    client.app.state.services.flusher.drain()
    review = client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                         json={"stars": 3}).json()
    assert client.get(f"/v1/models/{slug}").json()["rating"] == {"average": 3.0, "count": 1}
    assert client.post(f"/v1/admin/reviews/{review['id']}/hide",
                       headers=admin).status_code == 200
    assert client.get(f"/v1/models/{slug}").json()["rating"] == {"average": None, "count": 0}


def test_concurrent_first_reviews_of_one_buyer_make_one_review(client, listing):
    from concurrent.futures import ThreadPoolExecutor

    slug = listing["slug"]
    buyer = paying_buyer(client, slug)
    before = client.get(f"/v1/models/{slug}").json()["rating"]["count"]

    def post(stars: int) -> int:
        return int(client.post(f"/v1/models/{slug}/reviews", headers=bearer(buyer),
                               json={"stars": stars, "text": f"try {stars}"}).status_code)

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(post, [1, 2, 3, 4, 5, 1]))
    assert sorted(statuses) == [200] * 5 + [201]
    assert client.get(f"/v1/models/{slug}").json()["rating"]["count"] == before + 1
