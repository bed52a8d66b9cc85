"""Each listing's OpenAPI document: generated from its manifest, valid, and what real calls
send and get (validated against it), on both stacks."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tests.helpers import bearer, grant, new_key, signup, v2_body
from tests.integration.test_api import _digit_png

CALLS = {  # slug -> a real task-level body
    "handwritten-digits": {"image": _digit_png()},
    "iris-species": {"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                               "petal_width": 0.2}, [6.7, 3.0, 5.2, 2.3]]},
    "diabetes-progression": {"rows": [[0.0] * 10]},
}


def _validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of one component schema, its $refs resolved within the document."""
    schema = {**doc["components"]["schemas"][name], "components": doc["components"]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("slug", sorted(CALLS))
def test_real_calls_fit_the_listing_openapi(client, slug):
    r = client.get(f"/v1/models/{slug}/openapi.json")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {f"/v1/models/{slug}/predict", f"/v2/models/{slug}/infer",
                                 f"/v2/models/{slug}/versions/{{version}}/infer"}
    predict = doc["paths"][f"/v1/models/{slug}/predict"]["post"]
    assert predict["security"] == [{"apiKey": []}]
    assert {"200", "401", "402", "410", "422", "429"} <= set(predict["responses"])
    assert "X-Cost" in predict["responses"]["200"]["headers"]

    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    key = bearer(new_key(client, buyer))
    body = CALLS[slug]
    _validator(doc, "PredictRequest").validate(body)
    r = client.post(f"/v1/models/{slug}/predict", json=body, headers=key)
    assert r.status_code == 200, r.text
    _validator(doc, "PredictResponse").validate(r.json())
    for bad in ({}, {"rows": []}, {"image": 5}):
        with pytest.raises(jsonschema.ValidationError):
            _validator(doc, "PredictRequest").validate(bad)
        assert client.post(f"/v1/models/{slug}/predict", json=bad,
                           headers=key).status_code == 422
    r = client.post(f"/v1/models/{slug}/predict", json={}, headers=key)
    _validator(doc, "Error").validate(r.json())


def test_the_v2_schema_fits_a_real_call_and_the_page_links_it(client):
    doc = client.get("/v1/models/handwritten-digits/openapi.json").json()
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    body = v2_body()
    _validator(doc, "InferRequest").validate(body)
    r = client.post("/v2/models/handwritten-digits/infer", json=body,
                    headers=bearer(new_key(client, buyer)))
    assert r.status_code == 200
    _validator(doc, "InferResponse").validate(r.json())
    assert client.get("/v1/models/nope/openapi.json").status_code == 404
    client.cookies.clear()
    assert 'href="/v1/models/handwritten-digits/openapi.json"' in client.get(
        "/models/handwritten-digits").text


def test_the_page_snippets_fit_the_schema(client):
    """The model page's example bodies (where they are real data) validate."""
    from storefront.catalog import manifest_of
    from storefront.web.snippets import example_body

    svc = client.app.state.services
    for slug in ("iris-species", "diabetes-progression"):
        doc = client.get(f"/v1/models/{slug}/openapi.json").json()
        version = int(doc["info"]["version"])
        with svc.sessions() as db:
            manifest = manifest_of(db, slug, version)
        _validator(doc, "PredictRequest").validate(example_body(manifest))


def test_the_document_loads_as_openapi(client):
    import schemathesis

    doc = client.get("/v1/models/iris-species/openapi.json").json()
    ops = [r.ok().label for r in schemathesis.openapi.from_dict(doc).get_all_operations()]
    assert ops == ["POST /v1/models/iris-species/predict", "POST /v2/models/iris-species/infer",
                   "POST /v2/models/iris-species/versions/{version}/infer"]
