"""Deprecation and sunset of versions through the paid routes, on both stacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import yaml

from tests.helpers import admin_token, bearer, grant, new_key, signup, v2_body


def _publish(client: Any, seller: str, slug: str | None = None) -> dict[str, Any]:
    from storefront.demo import digits

    data, manifest = digits()
    manifest = {**manifest, "title": "Sunset digits",
                "pricing": {"per_call": "0.01", "trial_calls": 0}}
    form = {"attest_rights": "true", "license": "MIT", **({"slug": slug} if slug else {})}
    r = client.post("/v1/models", headers=bearer(seller), data=form,
                    files={"model": ("m.onnx", data, "application/octet-stream"),
                           "manifest": ("m.yaml", yaml.safe_dump(manifest).encode())})
    assert r.status_code == 201, r.text
    out = r.json()
    assert client.post(f"/v1/admin/models/{out['slug']}/approve", headers=bearer(
        admin_token(client)), json={"version": out["version"]}).status_code == 200
    return dict(out)


def _credits(client: Any, token: str) -> str:
    return str(client.get("/v1/account", headers=bearer(token)).json()["credits"])


def test_deprecated_versions_warn_then_answer_410_uncharged(client):
    _, seller = signup(client, "seller")
    slug = _publish(client, seller)["slug"]
    assert _publish(client, seller, slug)["version"] == 2
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    key = bearer(new_key(client, buyer))
    v1, latest = f"/v2/models/{slug}/versions/1/infer", f"/v2/models/{slug}/infer"

    deprecate = f"/v1/models/{slug}/versions/1/deprecate"
    soon = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    _, stranger = signup(client, "seller")
    r = client.post(deprecate, headers=bearer(stranger), json={"sunset": soon.isoformat()})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner"
    for bad in ("tomorrow", "2027-13-01", ""):
        assert client.post(deprecate, headers=bearer(seller),
                           json={"sunset": bad}).status_code == 422, bad
    assert client.post(f"/v1/models/{slug}/versions/9/deprecate", headers=bearer(seller),
                       json={"sunset": "2030-01-01"}).status_code == 404
    r = client.post(deprecate, headers=bearer(seller), json={"sunset": soon.isoformat()})
    assert r.status_code == 200, r.text
    assert r.json()["deprecated"] and not r.json()["sunset_passed"]

    r = client.post(v1, json=v2_body(), headers=key)
    assert r.status_code == 200 and r.headers["X-Cost"] == "0.01"
    assert r.headers["Deprecation"].startswith("@")
    assert parsedate_to_datetime(r.headers["Sunset"]) == soon
    assert 'rel="deprecation"' in r.headers["Link"]
    r = client.post(latest, json=v2_body(), headers=key)
    assert r.headers["X-Model-Version"] == "2" and "Deprecation" not in r.headers
    versions = {v["version"]: v for v in client.get(f"/v1/models/{slug}").json()["versions"]}
    assert versions[1]["deprecated"] and not versions[2]["deprecated"]
    assert "Deprecated: version 1" in client.get(f"/models/{slug}").text
    assert client.get(f"/v1/models/{slug}").json()["version"] == 2

    # the newest deprecated too: unpinned calls go to the newest one before its sunset
    client.post(f"/v1/models/{slug}/versions/2/deprecate", headers=bearer(seller),
                json={"sunset": (soon + timedelta(days=1)).date().isoformat()})
    r = client.post(latest, json=v2_body(), headers=key)
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "2", r.text
    assert "Sunset" in r.headers

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert client.post(deprecate, headers=bearer(seller), json={"sunset": past}).json()[
        "sunset_passed"]
    before = _credits(client, buyer)
    r = client.post(v1, json=v2_body(), headers=key)
    assert r.status_code == 410 and r.json()["error"]["code"] == "version_sunset"
    assert "X-Cost" not in r.headers and _credits(client, buyer) == before
    assert client.get(f"/v1/models/{slug}").json()["version"] == 2
    mine = client.get("/v1/seller/models", headers=bearer(seller)).json()["items"]
    v1_state = next(v for m in mine if m["slug"] == slug for v in m["versions"]
                    if v["version"] == 1)
    assert v1_state["deprecated"] and v1_state["sunset"]
    r = client.post(latest, json=v2_body(), headers=key)  # version 2 still before sunset
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "2"

    client.post(f"/v1/models/{slug}/versions/2/deprecate", headers=bearer(seller),
                json={"sunset": past})
    before = _credits(client, buyer)
    for path in (latest, v1, f"/v2/models/{slug}/versions/2/infer"):
        r = client.post(path, json=v2_body(), headers=key)
        assert r.status_code == 410 and r.json()["error"]["code"] == "version_sunset", path
    assert _credits(client, buyer) == before
    again = [client.post(v1, json=v2_body(), headers=key) for _ in range(2)]  # from memory
    assert again[0].status_code == again[1].status_code == 410
    assert again[0].json()["error"] == again[1].json()["error"]
    assert again[0].json()["error"]["details"]["sunset"] is not None
    client.app.state.services.flusher.drain()
    usage = client.get("/v1/usage", headers=bearer(buyer)).json()
    assert usage["total"]["paid_calls"] == 4  # v1 once, v2 three times; no 410 was charged
