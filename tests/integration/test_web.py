"""The browser pages over HTTP: sessions, CSRF, authorization, catalog filters, demo calls."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest

from metering import DemoMeter
from serving import TooManyRequests
from storefront.tryit import Visitor, demo_call
from tests.helpers import admin_token, bearer, email, fresh_address, signup

pytestmark = pytest.mark.integration
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def web(client: Any) -> Iterator[Any]:
    """The shared app's client, its cookie jar emptied after the test."""
    client.cookies.clear()
    yield client
    client.cookies.clear()


def _csrf(c: Any, path: str = "/login") -> str:
    html = c.get(path).text
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)  # type: ignore[union-attr]


def _login(c: Any, addr: str, password: str) -> None:
    r = c.post("/login", data={"email": addr, "password": password, "csrf": _csrf(c),
                               "next": "/account"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_forms_refuse_a_missing_or_forged_csrf_token(web: Any) -> None:
    addr, _ = signup(web, "buyer")
    _csrf(web)  # the browser now holds a CSRF cookie
    for token in (None, "0" * 64):
        data = {"email": addr, "password": "password-123"}
        if token:
            data["csrf"] = token
        r = web.post("/login", data=data, follow_redirects=False)
        assert r.status_code == 403 and "form expired" in r.text
    assert "am_session" not in web.cookies


def test_login_sets_a_session_and_never_redirects_off_site(web: Any) -> None:
    addr, _ = signup(web, "buyer")
    r = web.post("/login", data={"email": addr, "password": "password-123",
                                 "csrf": _csrf(web), "next": "//evil.example/x"},
                 follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert addr in web.get("/account").text
    r = web.post("/login", data={"email": addr, "password": "wrong-pass",
                                 "csrf": _csrf(web)}, follow_redirects=False)
    assert r.status_code == 401 and "Wrong e-mail or password" in r.text


def test_pages_apply_the_api_roles(web: Any) -> None:
    assert web.get("/account", follow_redirects=False).headers["location"] == (
        "/login?next=/account")
    addr, _ = signup(web, "buyer")
    _login(web, addr, "password-123")
    assert web.get("/admin").status_code == 403
    assert web.get("/seller").status_code == 403
    r = web.post("/admin/credits", data={"email": addr, "amount": "100.00",
                                         "csrf": _csrf(web, "/account")})
    assert r.status_code == 403
    assert web.get("/v1/account").status_code == 401  # the cookie is no API credential


def test_buyer_creates_caps_and_revokes_a_key_in_the_browser(web: Any) -> None:
    addr, token = signup(web, "buyer")
    _login(web, addr, "password-123")
    csrf = _csrf(web, "/account")
    r = web.post("/account/keys", data={"name": "shop", "spend_cap_day": "1.50", "csrf": csrf})
    secret = re.search(r'id="new-key">(amk_[^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    keys = web.get("/v1/keys", headers=bearer(token)).json()["items"]
    assert [(k["name"], k["spend_cap_day"]) for k in keys] == [("shop", "1.50")]
    assert web.post("/v1/models/iris-species/predict", headers=bearer(secret),
                    json={"rows": [IRIS_ROW]}).status_code == 200
    r = web.post(f"/account/keys/{keys[0]['id']}", data={"action": "revoke", "csrf": csrf})
    assert "Key revoked." in r.text
    assert web.post("/v1/models/iris-species/predict", headers=bearer(secret),
                    json={"rows": [IRIS_ROW]}).status_code == 401
    r = web.post("/account/keys", data={"spend_cap_day": "lots", "csrf": csrf})
    assert r.status_code == 200 and "spend_cap_day" in r.text and "new-key" not in r.text


def test_admin_grants_credits_and_rejects_with_a_reason(web: Any) -> None:
    buyer, _ = signup(web, "buyer")
    _login(web, "admin@test.local", "admin-pass-123")
    csrf = _csrf(web, "/admin")
    r = web.post("/admin/credits", data={"email": buyer, "amount": "2.50", "csrf": csrf})
    assert f"Granted 2.50 USD to {buyer}" in r.text
    r = web.post("/admin/credits", data={"email": buyer, "amount": "-1", "csrf": csrf})
    assert "amount must be positive" in r.text
    r = web.post("/admin/review/no-such-model/1", data={"decision": "reject", "reason": "x",
                                                       "csrf": csrf})
    assert "no listing 'no-such-model'" in html.unescape(r.text)


def test_catalog_searches_filters_sorts_and_escapes(web: Any) -> None:
    found = web.get("/?q=iris").text
    assert "Iris species" in found and "Handwritten digits" not in found
    cheap = web.get("/?max_price=0.001&sort=price").text
    assert "Iris species" in cheap and "Handwritten digits" not in cheap  # 0.002 per call
    assert "Handwritten digits" in web.get("/?category=vision").text
    assert "is not a price" in web.get("/?max_price=abc").text
    assert "<script>alert" not in web.get("/?q=<script>alert(1)</script>").text


def test_model_page_shows_snippets_pricing_and_the_demo(web: Any) -> None:
    text = web.get("/models/iris-species").text
    for part in ("YOUR_API_KEY", "/v1/models/iris-species/predict", "tritonclient",
                 "sepal_length", 'src="/try/iris-species/"', "0.001 USD", "5.00 USD"):
        assert part in text, part
    assert web.get("/models/nope").status_code == 404


def _demo(client: Any, visitor: Visitor, payload: Any = None, slug: str = "iris-species"
          ) -> dict[str, Any]:
    svc = client.app.state.services
    return client.portal.call(demo_call, svc, slug, payload or {"rows": [IRIS_ROW]}, visitor)


def test_demo_calls_use_trial_calls_first_and_never_charge(web: Any) -> None:
    addr, token = signup(web, "buyer")
    web.post("/v1/admin/credits", headers=bearer(admin_token(web)),
             json={"account_email": addr, "amount": "1.00"})
    me = web.get("/v1/account", headers=bearer(token)).json()
    visitor = Visitor(me["id"], f"10.0.0.{me['id'] % 250}")
    kinds = [_demo(web, visitor)["kind"] for _ in range(11)]  # iris has 10 trial calls
    assert kinds == ["trial"] * 10 + ["demo"]
    last = _demo(web, visitor)
    assert last["predictions"][0]["label"] == "setosa"
    assert "free demo calls left today" in last["remaining_text"]
    assert web.get("/v1/account", headers=bearer(token)).json()["credits"] == "1.00"
    # An API key on the same account finds its trial used up: the next call is paid.
    key = web.post("/v1/keys", headers=bearer(token)).json()["key"]
    r = web.post("/v1/models/iris-species/predict", headers=bearer(key),
                 json={"rows": [IRIS_ROW]})
    assert r.headers["X-Cost"] == "0.001"


def test_anonymous_demo_quota_and_listing_concurrency(web: Any) -> None:
    svc = web.app.state.services
    visitor = Visitor(None, fresh_address())
    limit = svc.settings.demo_calls_per_day
    for _ in range(limit):
        assert _demo(web, visitor)["kind"] == "demo"
    with pytest.raises(TooManyRequests, match="free demo calls of today are used up"):
        _demo(web, visitor)
    demos: DemoMeter = svc.demos
    other = Visitor(None, fresh_address())

    async def busy() -> str:
        listing = (await svc.registry.get("wine-cultivar")).listing_id
        async with demos.slot(listing, svc.settings.demo_concurrency) as free:
            assert free
            for _ in range(svc.settings.demo_concurrency - 1):
                await demos._acquire([svc.meter.names.demo_inflight(listing)], [99, 60_000])
            try:
                await demo_call(svc, "wine-cultivar", {"rows": [[13.0] * 13]}, other)
            except TooManyRequests as exc:
                return exc.code
            finally:
                for _ in range(svc.settings.demo_concurrency - 1):
                    await demos._release([svc.meter.names.demo_inflight(listing)], [])
        return "served"

    assert web.portal.call(busy) == "demo_busy"
    assert _demo(web, other, {"rows": [[13.0] * 13]}, "wine-cultivar")["kind"] == "demo"
    # Bad input is refused before anything is reserved: the quota is untouched.
    left = _demo(web, other, {"rows": [[13.0] * 13]}, "wine-cultivar")["demo_remaining"]
    with pytest.raises(Exception, match="row 0"):
        _demo(web, other, {"rows": [[1.0]]}, "wine-cultivar")
    assert _demo(web, other, {"rows": [[13.0] * 13]}, "wine-cultivar")["demo_remaining"] == (
        left - 1)


def uuid_byte() -> int:
    return int(email("x")[2:8], 16) % 250 + 1


@pytest.fixture(scope="module")
def iris_files() -> tuple[bytes, str]:
    import yaml

    from storefront.demo import iris

    data, manifest = iris()
    return data, yaml.safe_dump({**manifest, "title": f"Web iris {uuid_byte()}"})


def test_seller_upload_form_review_and_demo_calls_counted(web: Any, iris_files: Any) -> None:
    seller, _ = signup(web, "seller")
    _login(web, seller, "password-123")
    data, manifest = iris_files
    form = {"csrf": _csrf(web, "/seller"), "license": "MIT", "attest_rights": "true"}
    files = {"model": ("iris.onnx", data), "manifest": ("iris.yaml", manifest.encode())}
    r = web.post("/seller/upload", data={**form, "attest_rights": ""}, files=files)
    assert "attest that you hold the rights" in r.text
    r = web.post("/seller/upload", data=form, files=files)
    slug = re.search(r"Uploaded ([a-z0-9-]+) version 1", r.text).group(1)  # type: ignore[union-attr]
    assert "pending_review" in r.text
    r = web.post("/seller/upload", data={**form, "slug": slug}, files=files)
    assert f"Uploaded {slug} version 2" in r.text

    web.cookies.clear()
    _login(web, "admin@test.local", "admin-pass-123")
    csrf = _csrf(web, "/admin")
    r = web.post(f"/admin/review/{slug}/2", data={"decision": "reject", "csrf": csrf})
    assert "Write the reason for the rejection" in r.text
    r = web.post(f"/admin/review/{slug}/2", data={"decision": "reject", "csrf": csrf,
                                                  "reason": "duplicate of version 1"})
    assert f"Rejected {slug} version 2." in r.text
    r = web.post(f"/admin/review/{slug}/1", data={"decision": "approve", "csrf": csrf})
    assert f"Approved {slug} version 1: it is live." in r.text
    assert f'href="/models/{slug}"' in web.get("/?q=web+iris").text

    for _ in range(2):
        assert _demo(web, Visitor(None, "203.0.113.9"), slug=slug)["kind"] == "demo"
    web.app.state.services.flusher.drain()
    web.cookies.clear()
    _login(web, seller, "password-123")
    page = web.get("/seller").text
    assert "duplicate of version 1" in page and 'class="status-live"' in page
    row = re.search(r"<tr><td>\d{4}-\d\d-\d\d</td><td>(\d+)</td><td>(\d+)</td>", page)
    assert row is not None and row.groups() == ("2", "2")  # 2 calls, both demo calls
    assert '<svg class="chart"' in page
    token = web.post("/v1/auth/token", data={"username": seller,
                                              "password": "password-123"}).json()["access_token"]
    earned = web.get("/v1/seller/earnings", headers={"Authorization": f"Bearer {token}"}).json()
    assert earned["total"]["demo_calls"] == 2 and earned["total"]["revenue"] == "0.00"


def test_logout_ends_the_session(web: Any) -> None:
    addr, _ = signup(web, "buyer")
    _login(web, addr, "password-123")
    r = web.post("/logout", data={"csrf": _csrf(web, "/account")}, follow_redirects=False)
    assert r.status_code == 303
    assert web.get("/account", follow_redirects=False).status_code == 303
