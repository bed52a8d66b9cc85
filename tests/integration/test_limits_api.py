"""Rate limits, spend caps and the headers a caller sees, through the HTTP API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.helpers import bearer, grant, new_key, signup, v2_body


def test_key_limits_are_set_by_the_owner(client):
    _, buyer = signup(client, "buyer")
    r = client.post("/v1/keys", headers=bearer(buyer),
                    json={"name": "ci", "spend_cap_day": "1.50", "rate_limit_rps": 5,
                          "rate_limit_burst": 10})
    assert r.status_code == 201
    key = r.json()
    assert (key["spend_cap_day"], key["rate_limit_rps"], key["rate_limit_burst"]) == (
        "1.50", 5, 10)
    r = client.patch(f"/v1/keys/{key['id']}", headers=bearer(buyer),
                     json={"spend_cap_day": None, "spend_cap_month": "20"})
    assert (r.json()["spend_cap_day"], r.json()["spend_cap_month"]) == (None, "20.00")
    for bad in ({"spend_cap_day": "-1"}, {"spend_cap_day": "abc"},
                {"rate_limit_rps": 10**9}, {"rate_limit_burst": 0}):
        r = client.patch(f"/v1/keys/{key['id']}", headers=bearer(buyer), json=bad)
        assert r.status_code == 422 and "error" in r.json()
    _, other = signup(client, "buyer")
    assert client.patch(f"/v1/keys/{key['id']}", headers=bearer(other),
                        json={"name": "x"}).status_code == 404


def test_rate_limited_calls_get_429_with_headers_and_are_not_charged(client):
    email, buyer = signup(client, "buyer")
    grant(client, email, "10.00")
    key = client.post("/v1/keys", headers=bearer(buyer),
                      json={"rate_limit_rps": 0.01, "rate_limit_burst": 8}).json()["key"]

    def one(_):
        return client.post("/v2/models/handwritten-digits/infer", json=v2_body(),
                           headers=bearer(key))

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(40)))
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) == 8 and len(limited) == 32
    assert all(r.json()["error"]["code"] == "rate_limited" for r in limited)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert all(r.headers["RateLimit-Limit"] == "8" for r in ok + limited)
    assert {r.headers["RateLimit-Remaining"] for r in limited} == {"0"}
    assert sorted(int(r.headers["RateLimit-Remaining"]) for r in ok) == list(range(8))
    paid = 8 - 5  # the first five were the trial
    me = client.get("/v1/account", headers=bearer(buyer)).json()
    assert me["credits"] == f"{10 - paid * 0.002:.3f}"


def test_spend_cap_gives_402_with_a_clear_message(client):
    email, buyer = signup(client, "buyer")
    grant(client, email, "10.00")
    key = client.post("/v1/keys", headers=bearer(buyer),
                      json={"spend_cap_day": "0.004"}).json()["key"]
    codes = [client.post("/v2/models/handwritten-digits/infer", json=v2_body(),
                         headers=bearer(key)).status_code for _ in range(8)]
    assert codes == [200] * 7 + [402]  # 5 trial + 2 paid at 0.002
    r = client.post("/v2/models/handwritten-digits/infer", json=v2_body(), headers=bearer(key))
    err = r.json()["error"]
    assert err["code"] == "spend_cap_reached" and "daily spend cap of 0.004 USD" in err["message"]
    assert err["details"] == {"period": "daily", "cap": "0.004", "price": "0.002"}
    other = new_key(client, buyer)  # caps are per key
    assert client.post("/v2/models/handwritten-digits/infer", json=v2_body(),
                       headers=bearer(other)).status_code == 200


def test_listing_rate_limit_from_the_manifest(client):
    from storefront.demo import iris

    data, manifest = iris()
    manifest.update(title="Limited iris", rate_limit={"rps": 0.01, "burst": 2})
    import yaml

    _, seller = signup(client, "seller")
    r = client.post("/v1/models", headers=bearer(seller),
                    data={"attest_rights": "true", "license": "MIT"},
                    files={"model": ("m.onnx", data), "manifest": ("m.yaml",
                                                                   yaml.safe_dump(manifest))})
    slug = r.json()["slug"]
    from tests.helpers import admin_token

    client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin_token(client)))
    _, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    body = {"rows": [[5.1, 3.5, 1.4, 0.2]]}
    codes = [client.post(f"/v1/models/{slug}/predict", json=body,
                         headers=bearer(key)).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]
