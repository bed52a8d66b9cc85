"""The authorization matrix (issue 16): every route with a path id or slug, as every role, on the
other tenant's real resources.

Two buyers and two sellers each own real things (API keys, live and pending listings, export
licenses, bundles, Nano Kit orders). Every row of ``MATRIX`` names a route (from the app's route
table), the resource of tenant A that it is requested with, and the status expected for each
role: anonymous, buyer A (the owner), buyer B, seller A (the owner), seller B, admin. Cells run in
``ORDER`` (the owner and the admin last, so a cell that changes the resource does so after the
refusals were checked). The body of every refused or non-owner cell must not carry tenant A's
private data (e-mail, key prefix, shipping name, a pending listing's title).

A route in the app without a row here fails ``test_every_route_with_a_path_id_has_a_row``.
Web pages answer redirects: ``"303 login"`` (to the login page), ``"303 done"`` (the action was
carried out), ``"303 error"`` (refused, with the reason in the flash).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.helpers import admin_token, bearer, grant, new_key, signup, v2_body

ROLES = ("anonymous", "buyer", "other_buyer", "seller", "other_seller", "admin")
ORDER = ("anonymous", "other_buyer", "other_seller", "seller", "buyer", "admin")
DIGIT_PNG = (  # an 8x8 white PNG: the digits model's task-level input
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEElEQVR4nGP8zwABTAwUMQBJQQEPeWDz"
    "+AAAAABJRU5ErkJggg==")
ADDRESS = {"line1": "1 Main St", "city": "Lyon", "postal_code": "69001", "country": "FR"}


@dataclass
class Tenant:
    email: str
    token: str
    key: str  # an API key of this account
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    tenants: dict[str, Tenant]  # by role; anonymous has none
    ids: dict[str, Any]  # tenant A's resources, by name
    private: list[str]  # tenant A's data no other tenant may see
    signing_key: str


def _upload(client: Any, token: str, data: bytes, manifest: dict[str, Any]) -> str:
    files = {"model": ("m.onnx", data, "application/octet-stream"),
             "manifest": ("manifest.yaml", yaml.safe_dump(manifest).encode(), "application/yaml")}
    r = client.post("/v1/models", headers=bearer(token), files=files,
                    data={"attest_rights": "true", "license": "MIT"})
    assert r.status_code == 201, r.text
    return str(r.json()["slug"])


def _buyer_things(client: Any, email: str, token: str, label: str) -> dict[str, Any]:
    """A buyer's real resources: keys, an export license, bundles, a kit order."""
    grant(client, email, "100.00")
    keys = {}
    for name in ("patch", "delete", "web"):
        r = client.post("/v1/keys", headers=bearer(token), json={"name": f"{label}-{name}"})
        assert r.status_code == 201, r.text
        keys[name] = r.json()
    r = client.post("/v1/models/iris-species/purchase", headers=bearer(token))
    assert r.status_code == 201, r.text
    r = client.post("/v1/exports", headers=bearer(token),
                    json={"slug": "iris-species", "target": "nano-kit"})
    assert r.status_code == 201, r.text
    export = r.json()
    ship_to = f"Ship {label} {uuid.uuid4().hex[:8]}"
    r = client.post("/v1/kit-orders", headers=bearer(token),
                    json={"export_id": export["id"],
                          "shipping_address": {"name": ship_to, **ADDRESS}})
    assert r.status_code == 201, r.text
    return {"keys": keys, "export": export["id"], "license": export["license_id"],
            "order": r.json()["id"], "ship_to": ship_to}


@pytest.fixture(scope="module")
def world(client: Any) -> World:
    from storefront.demo import digits

    data, manifest = digits()
    pricing = {"per_call": "0.001", "trial_calls": 1000, "export_price": "1.00"}
    admin = admin_token(client)
    tenants: dict[str, Tenant] = {}
    for role, kind in (("buyer", "buyer"), ("other_buyer", "buyer"), ("seller", "seller"),
                       ("other_seller", "seller")):
        email, token = signup(client, kind)
        tenants[role] = Tenant(email, token, new_key(client, token))
    tenants["admin"] = Tenant("admin@test.local", admin, new_key(client, admin))
    for role in ("buyer", "other_buyer"):
        t = tenants[role]
        t.extra = _buyer_things(client, t.email, t.token, role)

    titles = {}
    slugs = {}
    mine = ("live", "delist", "approve", "reject", "web_review", "pending", "reviewed",
            "web_buy")
    for seller, names in (("seller", mine), ("other_seller", ("live",))):
        for name in names:
            title = f"Matrix {seller} {name} {uuid.uuid4().hex[:6]}"
            slug = _upload(client, tenants[seller].token, data,
                           {**manifest, "title": title, "pricing": pricing})
            if name in ("live", "delist", "reviewed", "web_buy"):
                r = client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin))
                assert r.status_code == 200, r.text
            titles[f"{seller}:{name}"], slugs[f"{seller}:{name}"] = title, slug

    reviews = {}  # buyers' reviews of seller A's listing (a purchase verifies them)
    for role in ("buyer", "other_buyer"):
        slug, token = slugs["seller:reviewed"], tenants[role].token
        assert client.post(f"/v1/models/{slug}/purchase",
                           headers=bearer(token)).status_code == 201
        r = client.post(f"/v1/models/{slug}/reviews", headers=bearer(token),
                        json={"stars": 4, "text": f"matrix {role}"})
        assert r.status_code == 201, r.text
        reviews[role] = r.json()["id"]
    handle = client.get("/v1/account", headers=bearer(tenants["seller"].token)).json()["handle"]
    job = _web_build(client, tenants["buyer"].token, slugs["seller:reviewed"],
                     client.app.state.services.signing_key)
    a = tenants["buyer"].extra
    hook = f"https://hooks.example.com/{uuid.uuid4().hex}"  # buyer A's alert webhook
    r = client.put(f"/v1/keys/{a['keys']['patch']['id']}/alerts",
                   headers=bearer(tenants["buyer"].token), json={"webhook_url": hook})
    assert r.status_code == 200, r.text
    ids = {"key_patch": a["keys"]["patch"]["id"], "key_delete": a["keys"]["delete"]["id"],
           "key_web": a["keys"]["web"]["id"], "export": a["export"], "order": a["order"],
           "license": a["license"],
           "live": slugs["seller:live"], "delist": slugs["seller:delist"],
           "approve": slugs["seller:approve"], "reject": slugs["seller:reject"],
           "web_review": slugs["seller:web_review"], "pending": slugs["seller:pending"],
           "reviewed": slugs["seller:reviewed"], "review": reviews["buyer"],
           "review_b": reviews["other_buyer"], "handle": handle, "web_buy": slugs["seller:web_buy"],
           "job": job}
    private = [tenants["buyer"].email, tenants["seller"].email, a["ship_to"],
               a["keys"]["patch"]["prefix"], a["keys"]["delete"]["prefix"],
               a["keys"]["web"]["prefix"], tenants["buyer"].key[:16],
               titles["seller:reject"], titles["seller:pending"], hook]
    return World(tenants, ids, private, client.app.state.services.signing_key)


def _web_build(client: Any, token: str, slug: str, signing_key: str) -> str:
    """A bundle build buyer A started on the model page (its job id)."""
    nonce = uuid.uuid4().hex
    csrf = hmac.new(signing_key.encode(), f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()
    client.cookies.clear()
    r = client.post(f"/models/{slug}/exports", data={"csrf": csrf, "choice": "onnx:fp32"},
                    headers={"Cookie": f"am_csrf={nonce}; am_session={token}"},
                    follow_redirects=False)
    assert r.status_code == 303 and "/account/exports/jobs/" in r.headers["location"], r.text
    return str(r.headers["location"].rsplit("/", 1)[1])


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    target: dict[str, str]  # path parameter -> name in World.ids (or a literal after '=')
    expect: dict[str, int | str]  # role -> status (or "303 login|done|error")
    auth: str = "token"  # token | key | session (a web page: session cookie + CSRF token)
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None


def row(method: str, path: str, target: dict[str, str], statuses: tuple[Any, ...],
        **kw: Any) -> Row:
    return Row(method, path, target, dict(zip(ROLES, statuses, strict=True)), **kw)


#            columns:  anonymous, buyer(A), other_buyer, seller(A), other_seller, admin
MATRIX: list[Row] = [
    # API keys: the owner only; anyone else's (admin's too) is "no key" (404)
    row("PATCH", "/v1/keys/{key_id}", {"key_id": "key_patch"},
        (401, 200, 404, 404, 404, 404), json={"name": "renamed"}),
    row("DELETE", "/v1/keys/{key_id}", {"key_id": "key_delete"},
        (401, 200, 404, 404, 404, 404)),
    # a key's usage alerts: its owner only, as the key itself
    row("GET", "/v1/keys/{key_id}/alerts", {"key_id": "key_patch"},
        (401, 200, 404, 404, 404, 404)),
    row("PUT", "/v1/keys/{key_id}/alerts", {"key_id": "key_patch"},
        (401, 200, 404, 404, 404, 404),
        json={"daily_cap_percent": 80, "webhook_url": "https://hooks.example.com/m"}),
    row("POST", "/v1/keys/{key_id}/alerts/test", {"key_id": "key_patch"},
        (401, 202, 404, 404, 404, 404)),
    # the catalog: a live listing is public; a pending one does not exist for anybody
    row("GET", "/v1/models/{slug}", {"slug": "live"}, (200, 200, 200, 200, 200, 200)),
    row("GET", "/v1/models/{slug}", {"slug": "pending"}, (404, 404, 404, 404, 404, 404)),
    # moderation: admins only
    row("POST", "/v1/admin/models/{slug}/approve", {"slug": "approve"},
        (401, 403, 403, 403, 403, 200)),
    row("POST", "/v1/admin/models/{slug}/reject", {"slug": "reject"},
        (401, 403, 403, 403, 403, 200), json={"reason": "not good enough for the matrix"}),
    # buying an export license of a live listing: any signed-in account that may buy
    row("POST", "/v1/models/{slug}/purchase", {"slug": "live"},
        (401, 201, 201, 402, 402, 402)),  # no credits: past authorization, cannot pay
    # exports and kit orders: the buyer who owns them and admins
    row("GET", "/v1/exports/{export_id}", {"export_id": "export"},
        (401, 200, 404, 404, 404, 200)),
    row("GET", "/v1/exports/{export_id}/download", {"export_id": "export"},
        (401, 200, 404, 404, 404, 200)),
    # an export's edge receipt chain: its buyer, its listing's seller (here the demo seller,
    # not seller A) and admins; anyone else: no such licence
    row("GET", "/v1/edge-usage/{license_id}", {"license_id": "license"},
        (401, 200, 404, 404, 404, 200)),
    row("GET", "/v1/kit-orders/{order_id}", {"order_id": "order"},
        (401, 200, 404, 404, 404, 200)),
    row("POST", "/v1/admin/kit-orders/{order_id}/advance", {"order_id": "order"},
        (401, 403, 403, 403, 403, 200), json={"state": "flashed"}),
    # a listing's serving options and delisting: its seller and admins
    row("GET", "/v1/models/{slug}/serving", {"slug": "live"}, (401, 403, 403, 200, 403, 200)),
    row("PATCH", "/v1/models/{slug}/serving", {"slug": "live"},
        (401, 403, 403, 200, 403, 200), json={"max_batch_size": 4}),
    row("POST", "/v1/models/{slug}/delist", {"slug": "delist"},
        (401, 403, 403, 200, 403, 200)),
    row("POST", "/v1/models/{slug}/relist", {"slug": "delist"},
        (401, 403, 403, 200, 403, 200)),
    # the listing's seller edits it, deprecates a version (admins too); its API is public
    row("PATCH", "/v1/models/{slug}", {"slug": "live"}, (401, 403, 403, 200, 403, 200),
        json={"description": "edited by the matrix"}),
    row("POST", "/v1/models/{slug}/versions/{version}/deprecate",
        {"slug": "live", "version": "=1"}, (401, 403, 403, 200, 403, 200),
        json={"sunset": "2099-01-01"}),
    row("GET", "/v1/models/{slug}/openapi.json", {"slug": "live"},
        (200, 200, 200, 200, 200, 200)),
    row("GET", "/v1/models/{slug}/openapi.json", {"slug": "pending"},
        (404, 404, 404, 404, 404, 404)),
    # reviews: verified buyers (a paid call or a purchase) post; the listing's seller replies
    # once; admins hide; everyone reads; a seller's page is public
    row("POST", "/v1/models/{slug}/reviews", {"slug": "reviewed"},
        (401, 200, 200, 403, 403, 403), json={"stars": 5, "text": "edited"}),
    row("GET", "/v1/models/{slug}/reviews", {"slug": "reviewed"},
        (200, 200, 200, 200, 200, 200)),
    row("POST", "/v1/models/{slug}/reviews/{review_id}/reply",
        {"slug": "reviewed", "review_id": "review"}, (401, 403, 403, 201, 403, 403),
        json={"text": "thanks"}),
    row("POST", "/v1/admin/reviews/{review_id}/hide", {"review_id": "review"},
        (401, 403, 403, 403, 403, 200), json={"reason": "matrix"}),
    row("GET", "/v1/sellers/{name}", {"name": "handle"}, (200, 200, 200, 200, 200, 200)),
    # int8 calibration inputs: the listing's seller and admins; the compatibility table: public
    row("POST", "/v1/models/{slug}/calibration", {"slug": "live"},
        (401, 403, 403, 201, 403, 201), json={"bodies": [{"image": DIGIT_PNG}]}),
    # compare an export with the hosted model: a demo call, open to visitors, live listings
    row("POST", "/v1/models/{slug}/compare", {"slug": "live"},
        (200, 200, 200, 200, 200, 200), json={"target": "onnx-int8",
                                              "input": {"image": DIGIT_PNG}}),
    row("POST", "/v1/models/{slug}/compare", {"slug": "pending"},
        (404, 404, 404, 404, 404, 404), json={"target": "onnx-int8",
                                              "input": {"image": DIGIT_PNG}}),
    row("GET", "/v1/models/{slug}/export-compatibility", {"slug": "live"},
        (200, 200, 200, 200, 200, 200)),
    row("GET", "/v1/models/{slug}/export-compatibility", {"slug": "pending"},
        (404, 404, 404, 404, 404, 404)),
    # the inference protocol: an API key of any account on a live listing
    row("GET", "/v2/models/{slug}", {"slug": "live"}, (401, 200, 200, 200, 200, 200),
        auth="key"),
    row("GET", "/v2/models/{slug}", {"slug": "pending"}, (401, 404, 404, 404, 404, 404),
        auth="key"),
    row("GET", "/v2/models/{slug}/versions/{version}", {"slug": "live", "version": "=1"},
        (401, 200, 200, 200, 200, 200), auth="key"),
    row("GET", "/v2/models/{slug}/ready", {"slug": "live"}, (401, 200, 200, 200, 200, 200),
        auth="key"),
    row("GET", "/v2/models/{slug}/versions/{version}/ready", {"slug": "live", "version": "=1"},
        (401, 200, 200, 200, 200, 200), auth="key"),
    row("POST", "/v2/models/{slug}/infer", {"slug": "live"}, (401, 200, 200, 200, 200, 200),
        auth="key", json=v2_body()),
    row("POST", "/v2/models/{slug}/infer", {"slug": "pending"},
        (401, 404, 404, 404, 404, 404), auth="key", json=v2_body()),
    row("POST", "/v2/models/{slug}/versions/{version}/infer", {"slug": "live", "version": "=1"},
        (401, 200, 200, 200, 200, 200), auth="key", json=v2_body()),
    row("POST", "/v1/models/{slug}/predict", {"slug": "live"},
        (401, 200, 200, 200, 200, 200), auth="key", json={"image": DIGIT_PNG}),
    # web pages (session cookie + CSRF token)
    row("GET", "/models/{slug}", {"slug": "live"}, (200, 200, 200, 200, 200, 200),
        auth="session"),
    row("GET", "/models/{slug}", {"slug": "pending"}, (404, 404, 404, 404, 404, 404),
        auth="session"),
    row("POST", "/account/keys/{key_id}", {"key_id": "key_web"},
        ("303 login", "303 done", "303 error", "303 error", "303 error", "303 error"),
        auth="session", form={"name": "renamed on the web"}),
    row("POST", "/account/keys/{key_id}/alerts", {"key_id": "key_web"},
        ("303 login", "303 done", "303 error", "303 error", "303 error", "303 error"),
        auth="session", form={"daily_cap_percent": "80", "credits_below": "1.00"}),
    row("POST", "/admin/review/{slug}/{version}", {"slug": "web_review", "version": "=1"},
        ("303 login", 403, 403, 403, 403, "303 done"), auth="session",
        form={"decision": "approve"}),
    row("POST", "/models/{slug}/reviews", {"slug": "reviewed"},
        ("303 login", "303 done", "303 done", "303 error", "303 error", "303 error"),
        auth="session", form={"stars": "3", "text": "on the web"}),
    row("POST", "/models/{slug}/reviews/{review_id}/reply",
        {"slug": "reviewed", "review_id": "review_b"},
        ("303 login", 403, 403, "303 done", "303 error", "303 error"), auth="session",
        form={"text": "thanks on the web"}),
    row("POST", "/admin/reviews/{review_id}/hide", {"review_id": "review_b"},
        ("303 login", 403, 403, 403, 403, "303 done"), auth="session",
        form={"reason": "matrix"}),
    row("GET", "/sellers/{name}", {"name": "handle"}, (200, 200, 200, 200, 200, 200),
        auth="session"),
    row("GET", "/seller/models/{slug}", {"slug": "live"},
        ("303 login", 403, 403, 200, 403, 200), auth="session"),
    row("POST", "/seller/models/{slug}", {"slug": "live"},
        ("303 login", 403, 403, "303 done", "303 error", "303 done"), auth="session",
        form={"description": "edited on the web"}),
    row("GET", "/account/exports/{export_id}/download", {"export_id": "export"},
        ("303 login", 200, 404, 404, 404, 200), auth="session"),
    # the export licence on the model page: any signed-in account that may buy (the sellers
    # and the admin have no credits: refused with the reason); a bundle build: the licence's
    # holders (both buyers bought "reviewed"); a build's page: its buyer and admins
    row("POST", "/models/{slug}/purchase", {"slug": "web_buy"},
        ("303 login", "303 done", "303 done", "303 error", "303 error", "303 error"),
        auth="session", form={"action": "credits"}),
    row("POST", "/models/{slug}/exports", {"slug": "reviewed"},
        ("303 login", "303 done", "303 done", "303 error", "303 error", "303 error"),
        auth="session", form={"choice": "onnx:fp32"}),
    row("GET", "/account/exports/jobs/{job_id}", {"job_id": "job"},
        ("303 login", 200, 404, 404, 404, 200), auth="session"),
    row("POST", "/admin/kit-orders/{order_id}", {"order_id": "order"},
        ("303 login", 403, 403, 403, 403, "303 done"), auth="session",
        form={"state": "shipped", "tracking": "MATRIX-1"}),
    # ordering a kit on a bundle: its buyer only (an admin reads it but does not order on it)
    row("POST", "/account/exports/{export_id}/kit-order", {"export_id": "export"},
        ("303 login", "303 done", "303 error", "303 error", "303 error", "303 error"),
        auth="session", form={"name": "Matrix web kit", **ADDRESS}),
    row("POST", "/seller/models/{slug}/serving", {"slug": "live"},
        ("303 login", 403, 403, "303 done", "303 error", "303 done"), auth="session",
        form={"max_batch_size": "2"}),
    row("POST", "/seller/models/{slug}/status", {"slug": "delist"},
        ("303 login", 403, 403, "303 done", "303 error", "303 done"), auth="session",
        form={"action": "relist"}),
    row("POST", "/seller/models/{slug}/versions/{version}/deprecate",
        {"slug": "live", "version": "=1"},
        ("303 login", 403, 403, "303 done", "303 error", "303 done"), auth="session",
        form={"sunset": "2099-01-01"}),
]


def flat_routes(app: Any) -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for ctx in contexts():
                path = ctx.path or getattr(ctx.original_route, "path", "")
                for method in getattr(ctx.original_route, "methods", None) or ("*",):
                    yield method, path
        else:
            for method in getattr(route, "methods", None) or ("*",):
                yield method, route.path


def test_every_route_with_a_path_id_has_a_row(client: Any) -> None:
    served = {(m, p) for m, p in flat_routes(client.app) if "{" in p and m != "HEAD"}
    covered = {(r.method, r.path) for r in MATRIX}
    assert served - covered == set(), "routes with a path id and no row in MATRIX"
    assert covered - served == set(), "rows in MATRIX for routes the app does not serve"


def _csrf(world: World, nonce: str) -> str:
    return hmac.new(world.signing_key.encode(), f"csrf|{nonce}".encode(),
                    hashlib.sha256).hexdigest()


def _request(client: Any, world: World, r: Row, role: str) -> Any:
    params = {k: v[1:] if v.startswith("=") else str(world.ids[v]) for k, v in r.target.items()}
    url = r.path.format(**params)
    tenant = world.tenants.get(role)
    headers: dict[str, str] = {}
    form = dict(r.form) if r.form is not None else None
    client.cookies.clear()
    if r.auth == "session":
        nonce = uuid.uuid4().hex
        cookie = f"am_csrf={nonce}" + (f"; am_session={tenant.token}" if tenant else "")
        headers["Cookie"] = cookie
        if form is not None:
            form["csrf"] = _csrf(world, nonce)
    elif tenant is not None:
        headers.update(bearer(tenant.key if r.auth == "key" else tenant.token))
    return client.request(r.method, url, headers=headers, json=r.json, data=form,
                          follow_redirects=False)


def _outcome(resp: Any, expected: int | str) -> int | str:
    if isinstance(expected, int):
        return int(resp.status_code)
    location = resp.headers.get("location", "")
    kind = ("login" if location.startswith("/login") else "error" if "error=" in location
            else "done")
    return f"{resp.status_code} {kind}"


@pytest.mark.parametrize("r", MATRIX, ids=lambda r: f"{r.method} {r.path} {r.target}")
def test_matrix_row(client: Any, world: World, r: Row) -> None:
    got: dict[str, int | str] = {}
    leaks: list[str] = []
    for role in ORDER:
        resp = _request(client, world, r, role)
        got[role] = _outcome(resp, r.expect[role])
        if role not in ("buyer", "seller", "admin"):
            body = resp.text + (resp.headers.get("location") or "")
            leaks += [f"{role}: {m!r}" for m in world.private if m in body]
    assert {k: got[k] for k in ROLES} == r.expect
    assert not leaks, "another tenant's data in the answer"
