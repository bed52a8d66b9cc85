"""A buyer's Nano Kit and usage alerts in a real browser against a real `aimarket up`: the buyer
orders a kit on the dashboard, the admin moves it to shipped with a tracking reference on the
admin page, the buyer sees it shipped; a buyer sets an 80%-of-daily-cap alert on a key, makes
paid calls past it and sees the banner. Screenshots land in artifacts/browser/ (kit-*.png,
alerts-*.png)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from metering import format_usd, to_micro
from tests.browser.test_storefront import shot
from tests.e2e.test_journey import running
from tests.integration.journey import login, until

pytestmark = pytest.mark.browser
ADMIN = ("admin@example.com", "admin-pass-1")
SLUG = "iris-species"  # the demo catalog's model that offers a kit (39.00 USD)
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # alert rounds every half second, so the banner shows soon after the calls
    with running(tmp_path_factory.mktemp("kits"), admin_password=ADMIN[1],
                 extra_env={"AIMARKET_ALERTS_INTERVAL_S": "0.5"}) as (url, _):
        yield url


def _buyer(api: httpx.Client, email: str, credits: str) -> dict[str, str]:
    assert api.post("/v1/accounts", json={"email": email, "role": "buyer",
                                          "password": "buyer-pass"}).status_code == 201
    r = api.post("/v1/admin/credits", headers=login(api, *ADMIN),
                 json={"account_email": email, "amount": credits})
    assert r.status_code == 201, r.text
    return login(api, email, "buyer-pass")


def _login(page: Page, email: str, password: str, path: str) -> None:
    page.goto(f"/login?next={path}")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_a_buyer_orders_a_kit_and_sees_it_shipped(browse: Any, server: str) -> None:
    with httpx.Client(base_url=server, timeout=120) as api:
        buyer = _buyer(api, "kbuyer@example.com", "50.00")
        assert api.post(f"/v1/models/{SLUG}/purchase", headers=buyer).status_code == 201
        r = api.post("/v1/exports", headers=buyer, json={"slug": SLUG, "target": "nano-kit"})
        assert r.status_code == 201, r.text
        export_id = r.json()["id"]

    page = browse()
    _login(page, "kbuyer@example.com", "buyer-pass", "/account")
    form = page.locator(f"#kit-{export_id}")
    form.get_by_label("Name", exact=True).fill("Bea Lune")
    form.get_by_label("Address line 1", exact=True).fill("1 Main St")
    form.get_by_label("City", exact=True).fill("Lyon")
    form.get_by_label("Postal code", exact=True).fill("69001")
    form.get_by_label("Country", exact=True).select_option(label="France")
    shot(page, "kit-01-order-form")
    form.get_by_role("button", name="Order a Nano Kit (39.00 USD)").click()
    expect(page.get_by_role("status")).to_contain_text("Nano Kit ordered")
    expect(page.get_by_role("status")).to_contain_text("your credits: 6.00 USD")
    order = page.locator("#kit-orders tr", has_text=export_id)
    expect(order).to_contain_text("pending")
    expect(order).to_contain_text("Bea Lune, 1 Main St, 69001 Lyon, FR")
    shot(page, "kit-02-ordered")

    admin = browse()
    _login(admin, *ADMIN, "/admin")
    work = admin.locator("#kit-orders tr", has_text=export_id)
    work.get_by_role("button", name="Mark flashed").click()
    expect(admin.get_by_role("status")).to_contain_text("is flashed")
    work = admin.locator("#kit-orders tr", has_text=export_id)
    work.get_by_label("Tracking").fill("1Z-BROWSER-7")
    work.get_by_role("button", name="Mark shipped").click()
    expect(admin.get_by_role("status")).to_contain_text("is shipped")
    expect(admin.locator("#kit-orders tr", has_text=export_id)).to_contain_text("1Z-BROWSER-7")
    shot(admin, "kit-03-admin-shipped")

    page.goto("/account")
    order = page.locator("#kit-orders tr", has_text=export_id)
    expect(order).to_contain_text("shipped")
    expect(order).to_contain_text("1Z-BROWSER-7")
    expect(order.locator(".kit-history li")).to_have_count(3)
    shot(page, "kit-04-buyer-sees-shipped")


def test_an_alert_at_80_percent_of_the_daily_cap_shows_as_a_banner(browse: Any,
                                                                     server: str) -> None:
    with httpx.Client(base_url=server, timeout=120) as api:
        buyer = _buyer(api, "abuyer@example.com", "1.00")
        model = api.get(f"/v1/models/{SLUG}").json()
        trial, price = model["trial_calls"], Decimal(model["price_per_call"])
        r = api.post("/v1/keys", headers=buyer,
                     json={"name": "my-app", "spend_cap_day": str(price * 10)})
        assert r.status_code == 201, r.text
        key = {"Authorization": f"Bearer {r.json()['key']}"}

        page = browse()
        _login(page, "abuyer@example.com", "buyer-pass", "/account")
        page.get_by_label("alert percent of daily cap of my-app").fill("80")
        page.locator("#alerts").get_by_role("button", name="Save alerts").click()
        expect(page.get_by_role("status")).to_have_text("Alerts saved.")
        expect(page.locator("#alert-banner")).to_have_count(0)
        shot(page, "alerts-01-set")

        for _ in range(trial + 8):  # the free trial, then 8 paid calls: 80% of the cap
            r = api.post(f"/v1/models/{SLUG}/predict", headers=key, json={"rows": [ROW]})
            assert r.status_code == 200, r.text

        def banner() -> bool:
            page.goto("/account")
            return page.locator("#alert-banner").count() > 0

        until(banner, deadline_s=30, what="the alert banner")
    expect(page.locator("#alert-banner")).to_contain_text(
        f"my-app has spent {format_usd(to_micro(str(price * 8)))} of its "
        f"{format_usd(to_micro(str(price * 10)))} USD daily cap today")
    expect(page.locator("#alert-banner")).to_contain_text("(alert at 80%)")
    shot(page, "alerts-02-banner")
