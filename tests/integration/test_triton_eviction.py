"""The triton backend under AIMARKET_MODEL_MEMORY_MB, on the real bundled tritonserver: with a
budget fitting two of three listings, the least recently called version is unloaded from
Triton (model control), every listing still answers paid calls with onnxruntime's answers
(an evicted one is loaded again by its call), and a call that cannot wait for the load is 503
with Retry-After and charged nothing."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import numpy as np
import pytest

from serving.residency import MIN_COST
from serving.runtime import new_session
from serving.triton_backend import STUB_BYTES
from tests.integration.journey import (
    approve,
    buyer,
    credits,
    live_app,
    publish,
    signup,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.triton]
pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.http")

PRICE = Decimal("0.002")
ONE = MIN_COST + STUB_BYTES  # what a small model costs on the bundled server (one instance)


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[bytes, dict[str, Any]]]:
    from storefront.demo import digits, iris, wine

    return {"digits": digits(), "iris": iris(), "wine": wine()}


def _list(http: httpx.Client, trained: dict[str, Any]) -> dict[str, str]:
    """The models listed in order (no trial: every call is paid); name -> slug."""
    _, seller = signup(http, "seller")
    slugs = {}
    for name, (model, manifest) in trained.items():
        manifest = {**manifest, "pricing": {"per_call": str(PRICE), "trial_calls": 0}}
        slug = f"trev-{name}-{time.monotonic_ns() % 10**8}"
        approve(http, slug, publish(http, seller, model, manifest, slug=slug)["version"])
        slugs[name] = slug
    return slugs


def _rows(trained: dict[str, Any], name: str) -> np.ndarray:
    width = trained[name][1]["inputs"][0]["shape"][1]
    return np.random.default_rng(len(name)).random((2, width), dtype=np.float32) * 4


def _body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


def _ready(backend: Any) -> set[str]:
    """The models Triton itself has loaded (READY)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(backend.url)
    return {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}


@pytest.fixture
def app_on(tmp_path: Any, embedded_redis_url: str) -> Any:
    def start(**settings: Any) -> Any:
        return live_app(tmp_path, embedded_redis_url, "the app to start tritonserver",
                        redis_namespace=f"trev{time.monotonic_ns()}:",
                        serving_backend="triton", **settings)
    return start


def test_three_listings_on_a_budget_of_two_on_triton(app_on: Any,
                                                     trained: dict[str, Any]) -> None:
    with app_on(model_memory_mb=2 * ONE >> 20) as (url, app), \
            httpx.Client(base_url=url, timeout=60) as http:
        backend = app.state.services.backend
        slugs = _list(http, trained)
        resident = {n for n, s in slugs.items() if backend.is_resident(f"{s}@1")}
        assert resident == {"iris", "wine"}  # approving wine unloaded digits, the oldest
        until(lambda: f"{slugs['digits']}-v1" not in _ready(backend), 30,
              "Triton to unload digits")
        assert backend.is_deployed(f"{slugs['digits']}@1")  # still live: loads on its call
        key, addr = buyer(http)
        order = ["digits", "iris", "wine", "digits", "wine", "iris"]
        for name in order:
            x = _rows(trained, name)
            r = http.post(f"/v2/models/{slugs[name]}/infer", headers=key, json=_body(x))
            assert r.status_code == 200, r.text
            assert r.headers["X-Cost"] == str(PRICE)
            labels = new_session(trained[name][0]).run(None, {"X": x})[0]
            assert r.json()["outputs"][0]["data"] == labels.tolist()
            assert sum(backend.is_resident(f"{s}@1") for s in slugs.values()) <= 2
        assert backend.resident_bytes() <= 2 * ONE
        # the last two called stay; the other is unloaded in Triton too
        until(lambda: _ready(backend) == {f"{slugs['wine']}-v1", f"{slugs['iris']}-v1"}, 30,
              "Triton to hold the two most recently called")
        assert credits(http, addr) == Decimal("1.00") - len(order) * PRICE


def test_a_call_that_cannot_wait_for_the_triton_load_is_503_and_not_charged(
        app_on: Any, trained: dict[str, Any]) -> None:
    two = {k: trained[k] for k in ("digits", "iris")}
    with app_on(model_memory_mb=ONE >> 20, model_load_wait_s=1e-9) as (url, app), \
            httpx.Client(base_url=url, timeout=60) as http:
        backend = app.state.services.backend
        slugs = _list(http, two)  # iris, approved last, unloaded digits
        assert not backend.is_resident(f"{slugs['digits']}@1")
        key, _ = buyer(http, credits="1.00")
        x = _rows(trained, "digits")
        r = http.post(f"/v2/models/{slugs['digits']}/infer", headers=key, json=_body(x))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backend_unavailable"
        assert int(r.headers["Retry-After"]) >= 1

        def served() -> httpx.Response | None:
            r = http.post(f"/v2/models/{slugs['digits']}/infer", headers=key, json=_body(x))
            assert r.status_code in (200, 503), r.text
            return r if r.status_code == 200 else None

        ok = until(served, 60, "the model to finish loading")
        # one call charged, however many were refused while it loaded
        assert Decimal(ok.headers["X-Credits-Remaining"]) == Decimal("1.00") - PRICE
        labels = new_session(trained["digits"][0]).run(None, {"X": x})[0]
        assert ok.json()["outputs"][0]["data"] == labels.tolist()
