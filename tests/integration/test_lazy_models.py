"""Models loaded by use, not by catalog size: with AIMARKET_MODEL_MEMORY_MB fitting two of
three listings, all three answer paid calls correctly, the least recently used is unloaded and
reloads on its next call, the model page shows the measured cold start; a call that cannot
wait for its model's load is 503 with Retry-After and charged nothing."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import numpy as np
import pytest

from serving.residency import MIN_COST
from serving.runtime import new_session
from tests.integration.journey import approve, buyer, live_app, publish, signup, until

pytestmark = pytest.mark.integration
PRICE = Decimal("0.002")


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[bytes, dict[str, Any]]]:
    from storefront.demo import digits, iris, wine

    return {"digits": digits(), "iris": iris(), "wine": wine()}


def _list(http: httpx.Client, trained: dict[str, Any]) -> dict[str, str]:
    """The three models listed (no trial: every call is paid); name -> slug."""
    _, seller = signup(http, "seller")
    slugs = {}
    for name, (model, manifest) in trained.items():
        manifest = {**manifest, "pricing": {"per_call": str(PRICE), "trial_calls": 0}}
        slug = f"lazy-{name}-{time.monotonic_ns() % 10**8}"
        approve(http, slug, publish(http, seller, model, manifest, slug=slug)["version"])
        slugs[name] = slug
    return slugs


def _rows(trained: dict[str, Any], name: str) -> np.ndarray:
    width = trained[name][1]["inputs"][0]["shape"][1]
    return np.random.default_rng(len(name)).random((2, width), dtype=np.float32) * 4


def _body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


@pytest.fixture
def app_on(tmp_path: Any, embedded_redis_url: str) -> Any:
    def start(**settings: Any) -> Any:
        return live_app(tmp_path, embedded_redis_url, "the app to listen",
                        redis_namespace=f"lazy{time.monotonic_ns()}:", **settings)
    return start


def test_three_listings_on_a_budget_of_two(app_on: Any, trained: dict[str, Any]) -> None:
    with app_on(model_memory_mb=2 * MIN_COST >> 20) as (url, app), \
            httpx.Client(base_url=url, timeout=60) as http:
        backend = app.state.services.backend
        slugs = _list(http, trained)
        key, _ = buyer(http)
        resident = {n for n, s in slugs.items() if backend.is_resident(f"{s}@1")}
        assert resident == {"iris", "wine"}  # approving wine unloaded digits, the oldest
        for name in ["digits", "iris", "wine", "digits", "wine", "iris"]:
            x = _rows(trained, name)
            r = http.post(f"/v2/models/{slugs[name]}/infer", headers=key, json=_body(x))
            assert r.status_code == 200, r.text
            labels = new_session(trained[name][0]).run(None, {"X": x})[0]
            assert r.json()["outputs"][0]["data"] == labels.tolist()
            assert sum(backend.is_resident(f"{s}@1") for s in slugs.values()) <= 2
        page = http.get(f"/models/{slugs['digits']}")
        assert page.status_code == 200 and "Cold start" in page.text


def test_a_call_that_cannot_wait_for_the_load_is_503_and_not_charged(
        app_on: Any, trained: dict[str, Any]) -> None:
    one = {k: trained[k] for k in ("digits", "iris")}
    with app_on(model_memory_mb=MIN_COST >> 20, model_load_wait_s=1e-9) as (url, app), \
            httpx.Client(base_url=url, timeout=60) as http:
        slugs = _list(http, one)  # iris, approved last, unloaded digits
        key, _ = buyer(http, credits="1.00")
        x = _rows(trained, "digits")
        r = http.post(f"/v2/models/{slugs['digits']}/infer", headers=key, json=_body(x))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backend_unavailable"
        assert int(r.headers["Retry-After"]) >= 1

        def served() -> httpx.Response | None:
            r = http.post(f"/v2/models/{slugs['digits']}/infer", headers=key, json=_body(x))
            return r if r.status_code == 200 else None

        ok = until(served, 60, "the model to finish loading")
        # one call charged, however many were refused while it loaded
        assert Decimal(ok.headers["X-Credits-Remaining"]) == Decimal("1.00") - PRICE
