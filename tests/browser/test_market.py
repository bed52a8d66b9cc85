"""The market in a real browser against a real `aimarket up`: a verified buyer reviews a model,
the review shows (escaped) on the model page and its rating on the catalog card, the seller
replies and edits a price on the site, the seller's public page. Screenshots land in
artifacts/browser/ (market-*.png)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_storefront import shot
from tests.e2e.test_journey import running
from tests.integration.journey import login, until

pytestmark = pytest.mark.browser
ADMIN = ("admin@example.com", "admin-pass-1")
HOSTILE_REVIEW = 'Works well <script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("market"), admin_password=ADMIN[1]) as (url, _):
        yield url


def _login(page: Page, email: str, password: str, path: str) -> None:
    page.goto(path)
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def _listing_with_a_paying_buyer(api: httpx.Client) -> tuple[str, str]:
    """A seller (handle chosen at sign-up) lists a model; a buyer makes a paid call of it.
    (slug, seller handle)."""
    from storefront.demo import iris

    data, manifest = iris()
    manifest = {**manifest, "title": "Market iris",
                "pricing": {"per_call": "0.002", "trial_calls": 0}}
    assert api.post("/v1/accounts", json={"email": "mseller@example.com", "role": "seller",
                                          "password": "seller-pass", "handle": "iris-labs"}
                    ).status_code == 201
    seller = login(api, "mseller@example.com", "seller-pass")
    r = api.post("/v1/models", headers=seller, data={"attest_rights": "true", "license": "MIT",
                                                     "manifest": json.dumps(manifest)},
                 files={"model": ("iris.onnx", data)})
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    admin = login(api, *ADMIN)
    assert api.post(f"/v1/admin/models/{slug}/approve", headers=admin).status_code == 200
    assert api.post("/v1/accounts", json={"email": "mbuyer@example.com", "role": "buyer",
                                          "password": "buyer-pass"}).status_code == 201
    buyer = login(api, "mbuyer@example.com", "buyer-pass")
    assert api.post("/v1/admin/credits", headers=admin,
                    json={"account_email": "mbuyer@example.com", "amount": "1.00"}
                    ).status_code == 201
    key = {"Authorization": f"Bearer {api.post('/v1/keys', headers=buyer).json()['key']}"}
    r = api.post(f"/v1/models/{slug}/predict", headers=key, json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
    assert r.status_code == 200 and r.headers["X-Cost"] == "0.002", r.text
    until(lambda: api.get("/v1/usage", headers=buyer).json()["total"]["paid_calls"] == 1,
          what="the paid call in the ledger")
    return slug, "iris-labs"


def test_a_verified_buyer_reviews_and_the_seller_replies(browse: Any, server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as api:
        slug, handle = _listing_with_a_paying_buyer(api)

    buyer = browse()
    _login(buyer, "mbuyer@example.com", "buyer-pass", f"/login?next=/models/{slug}")
    expect(buyer.get_by_role("heading", name="Market iris")).to_be_visible()
    form = buyer.locator("form.review-form")
    form.get_by_label("Stars").select_option("4")
    form.get_by_label("Your review").fill(HOSTILE_REVIEW)
    shot(buyer, "market-01-review-form")
    form.get_by_role("button", name="Post your review").click()
    expect(buyer.get_by_role("status")).to_have_text("Review posted.")
    review = buyer.locator("article.review").first
    expect(review.locator(".review-text")).to_have_text(HOSTILE_REVIEW)  # text, not markup
    expect(buyer.locator("article.review img, article.review script")).to_have_count(0)
    expect(buyer.locator("p.rating").first).to_contain_text("4.0")
    shot(buyer, "market-02-review-posted")
    # editing: the same form, now prefilled
    form = buyer.locator("form.review-form")
    form.get_by_label("Stars").select_option("5")
    form.get_by_role("button", name="Update your review").click()
    expect(buyer.get_by_role("status")).to_have_text("Review updated.")
    expect(buyer.locator("article.review")).to_have_count(1)

    visitor = browse()
    visitor.goto("/?q=market")
    card = visitor.locator(".card", has_text="Market iris")
    expect(card).to_contain_text("★ 5.0")
    expect(card).to_contain_text("(1 review)")
    expect(card.get_by_role("link", name=handle)).to_be_visible()
    shot(visitor, "market-03-catalog-card-rating")
    visitor.goto("/?sort=rating")
    expect(visitor.locator(".card").first).to_contain_text("Market iris")

    seller = browse()
    _login(seller, "mseller@example.com", "seller-pass", f"/login?next=/models/{slug}")
    reply = seller.locator("form.reply-form").first
    reply.get_by_label("Reply (once)").fill("Thank you!")
    reply.get_by_role("button", name="Reply").click()
    expect(seller.get_by_role("status")).to_have_text("Reply posted.")
    expect(seller.locator("blockquote.reply")).to_contain_text("Thank you!")
    expect(seller.locator("form.reply-form")).to_have_count(0)  # once per review
    shot(seller, "market-04-seller-reply")

    visitor.goto(f"/sellers/{handle}")
    expect(visitor.get_by_role("heading", name=handle)).to_be_visible()
    expect(visitor.locator(".seller-profile")).to_contain_text("Calls served")
    expect(visitor.locator(".card", has_text="Market iris")).to_be_visible()
    shot(visitor, "market-05-seller-page")


def test_the_seller_edits_a_price_on_the_site(browse: Any, server: str) -> None:
    seller = browse()
    _login(seller, "mseller@example.com", "seller-pass", "/login?next=/seller")
    seller.get_by_role("link", name="Edit listing").first.click()
    expect(seller.locator("#edit-listing")).to_be_visible()
    seller.get_by_label("Price per call (USD)").fill("0.005")
    shot(seller, "market-06-seller-edit")
    seller.get_by_role("button", name="Save").click()
    expect(seller.get_by_role("status")).to_contain_text("Saved")
    with httpx.Client(base_url=server, timeout=60) as api:
        slug = "market-iris"
        assert api.get(f"/v1/models/{slug}").json()["pricing"]["per_call"] == "0.005"
    seller.goto(f"/models/{slug}")
    expect(seller.locator("article.model")).to_contain_text("0.005 USD")
    shot(seller, "market-07-new-price-on-page")


def test_a_buyer_buys_an_export_licence_builds_a_bundle_and_downloads_it(
        browse: Any, server: str, tmp_path: Any) -> None:
    """On the model page: buy the export licence from credits, build an onnx bundle, follow
    its progress to the download link, download it; the bundle verifies against the
    platform's key and names the buyer."""
    from export import verify

    with httpx.Client(base_url=server, timeout=60) as api:
        assert api.post("/v1/accounts", json={"email": "xbuyer@example.com", "role": "buyer",
                                              "password": "buyer-pass"}).status_code == 201
        assert api.post("/v1/admin/credits", headers=login(api, *ADMIN),
                        json={"account_email": "xbuyer@example.com", "amount": "10.00"}
                        ).status_code == 201
        pem = api.get("/v1/exports/public-key").json()["public_key_pem"]

    buyer = browse()
    _login(buyer, "xbuyer@example.com", "buyer-pass", "/login?next=/models/iris-species")
    box = buyer.locator("#export")
    expect(box.get_by_role("button", name="Buy the export licence (5.00 USD from credits)")
           ).to_be_visible()
    box.scroll_into_view_if_needed()
    shot(buyer, "market-08-export-licence-offer")
    box.get_by_role("button", name="Buy the export licence").click()
    expect(box.get_by_role("status")).to_contain_text("You hold the export licence")
    expect(box.get_by_role("status")).to_contain_text("your credits: 5.00 USD")
    box.get_by_label("Target").select_option("onnx:fp32")
    shot(buyer, "market-09-licence-held-target-picker")
    box.get_by_role("button", name="Build the bundle").click()
    expect(buyer).to_have_url(re.compile(r"/account/exports/jobs/[0-9a-f]+$"))
    expect(buyer.locator("article.export-job ol.progress")).to_be_visible()
    shot(buyer, "market-10-bundle-progress")
    # the page reloads itself until the bundle is ready
    expect(buyer.get_by_role("heading", name="Your bundle of iris-species is ready")
           ).to_be_visible(timeout=90_000)
    expect(buyer.locator("pre")).to_have_text("aimarket verify iris-species-v1-onnx.zip")
    shot(buyer, "market-11-bundle-ready")
    with buyer.expect_download() as download:
        buyer.get_by_role("link", name="Download the bundle").click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == "iris-species-v1-onnx.zip"
    licence = verify(path.read_bytes(), pem)
    assert licence["licensee"] == "xbuyer@example.com"
    expect(buyer.locator("article.export-job")).to_contain_text(licence["license_id"])
