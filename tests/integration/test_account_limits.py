"""GET /v1/account/limits: credits, caps, spend so far and trial calls left, on both stacks."""

from __future__ import annotations

from decimal import Decimal

from tests.helpers import bearer, grant, signup, v2_body


def test_limits_answer_credits_caps_spend_and_trials(client):
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    key = client.post("/v1/keys", headers=bearer(buyer),
                      json={"name": "ci", "spend_cap_day": "0.50"}).json()
    other = client.post("/v1/keys", headers=bearer(buyer), json={"name": "idle"}).json()
    slug = "handwritten-digits"
    model = client.get(f"/v1/models/{slug}").json()
    trial, price = model["trial_calls"], Decimal(model["price_per_call"])

    fresh = client.get("/v1/account/limits", headers=bearer(buyer)).json()
    assert fresh["credits"] == "1.00" and fresh["trials"] == []
    asked = client.get("/v1/account/limits", headers=bearer(buyer), params={"slug": slug}).json()
    assert asked["trials"] == [{"slug": slug, "trial_calls": trial, "trial_used": 0,
                                "trial_remaining": trial}]

    for _ in range(trial + 2):
        r = client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                        headers=bearer(key["key"]))
        assert r.status_code == 200, r.text
    client.app.state.services.flusher.drain()
    body = client.get("/v1/account/limits", headers=bearer(buyer)).json()
    spent = 2 * price
    assert Decimal(body["credits"]) == Decimal("1.00") - spent
    assert body["trials"] == [{"slug": slug, "trial_calls": trial, "trial_used": trial,
                               "trial_remaining": 0}]
    by_id = {k["id"]: k for k in body["keys"]}
    day = by_id[key["id"]]["day"]
    assert day["cap"] == "0.50" and Decimal(day["spent"]) == spent
    assert Decimal(day["remaining"]) == Decimal("0.50") - spent
    month = by_id[key["id"]]["month"]
    assert month["cap"] is None and month["remaining"] is None
    assert Decimal(month["spent"]) == spent
    assert by_id[other["id"]]["day"] == {"cap": None, "spent": "0.00", "remaining": None}
    assert by_id[key["id"]]["rate_limit"]["burst"] >= 1

    assert client.delete(f"/v1/keys/{other['id']}", headers=bearer(buyer)).status_code == 200
    keys = client.get("/v1/account/limits", headers=bearer(buyer)).json()["keys"]
    assert [k["id"] for k in keys] == [key["id"]]  # revoked keys have no limits left
    assert client.get("/v1/account/limits").status_code == 401
    assert client.get("/v1/account/limits", headers=bearer(buyer),
                      params={"slug": "x" * 81}).status_code == 422
