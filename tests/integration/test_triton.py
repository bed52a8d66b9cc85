"""The ``triton`` backend on the real bundled tritonserver, started once by the app for this
module: approval loads a version into Triton, trial / 402 / paid calls with onnxruntime's own
answers, version pinning, dynamic batching, tritonclient against the paid gateway, a SIGKILLed
tritonserver mid-traffic (503s uncharged, then brought back; ledger == answered 200s), and
delisting unloads.

One real server (uvicorn in a thread) on SQLite + the embedded Valkey; the test talks HTTP to
it and reads Triton's state through the app's backend and Triton's own API.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.helpers import DIGIT_ZERO, v2_body

pytestmark = [pytest.mark.integration, pytest.mark.triton]
pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.http")

from tests.integration.journey import (  # noqa: E402
    admin,
    approve,
    buyer,
    credits,
    live_app,
    login,
    publish,
    signup,
    until,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           embedded_redis_url: str) -> Iterator[tuple[str, Any]]:
    with live_app(tmp_path_factory.mktemp("triton-data"), embedded_redis_url,
                  "the server to start tritonserver and listen", redis_namespace="triton:",
                  serving_backend="triton", serving_backends="triton,local",
                  rate_limit_rps=10_000, rate_limit_burst=10_000) as (url, app):
        pid = _backend((url, app)).server_pid
        yield url, app
    pid = _backend((url, app)).server_pid or pid
    with pytest.raises(ProcessLookupError):  # closing the app stops the server it started
        os.kill(pid, 0)


@pytest.fixture(scope="module")
def http(server: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=120) as c:
        yield c


def _backend(server: tuple[str, Any]) -> Any:
    """The Triton backend (behind the router: this server enables local too)."""
    return server[1].state.services.backend.backends["triton"]


def _triton(server: tuple[str, Any]) -> Any:
    """tritonclient on the bundled server itself (to read what it has loaded)."""
    import tritonclient.http as triton

    return triton.InferenceServerClient(_backend(server).url)


def _loaded(server: tuple[str, Any]) -> set[str]:
    return {m["name"] for m in _triton(server).get_model_repository_index()
            if m.get("state") == "READY"}


@pytest.fixture(scope="module")
def digits(http: httpx.Client) -> dict[str, Any]:
    """The digits MLP listed by a seller (version 1, 0.002 a call, 2 trial calls)."""
    from storefront.demo import digits as train

    model, manifest = train()
    manifest["pricing"] = {"per_call": "0.002", "trial_calls": 2}
    _, seller = signup(http, "seller")
    slug = f"tri-digits-{time.monotonic_ns() % 10**6}"
    pub = publish(http, seller, model, manifest, slug=slug)
    return {"slug": slug, "seller": seller, "model": model, "manifest": manifest,
            "version": pub["version"]}


def _ort(model: bytes, rows: list[list[float]]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": np.asarray(rows, np.float32)})


def test_approval_loads_into_triton_and_trial_402_paid_calls_answer_like_onnxruntime(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    assert f"{slug}-v1" not in _loaded(server)
    started = time.monotonic()
    approve(http, slug, 1)
    key, addr = buyer(http, credits=None)
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    first_call_s = time.monotonic() - started
    print(f"\napprove -> first paid call on Triton: {first_call_s:.2f} s")
    assert first_call_s < 10  # ~1 s here (one stub per instance, no auto-complete stub)
    assert f"{slug}-v1" in _loaded(server)
    assert r.status_code == 200, r.text
    assert (r.headers["X-Cost"], r.headers["X-Trial-Remaining"]) == ("0.00", "1")
    label, probabilities = _ort(digits["model"], [DIGIT_ZERO])
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == label.tolist() == [0]
    assert np.allclose(out["probabilities"]["data"], probabilities.ravel(), atol=1e-6)

    assert http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body()).status_code == 200
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"

    key, addr = buyer(http)
    from sklearn.datasets import load_digits

    rows = [list(map(float, row)) for row in load_digits().data[:5]]
    for _ in range(2):  # the trial calls
        r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body(rows))
        assert r.status_code == 200 and r.headers["X-Cost"] == "0.00", r.text
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body(rows))  # paid
    assert r.status_code == 200 and r.headers["X-Cost"] == "0.002", r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    label, probabilities = _ort(digits["model"], rows)
    assert out["label"]["data"] == label.tolist() and out["label"]["shape"] == [5]
    assert np.allclose(np.asarray(out["probabilities"]["data"]).reshape(5, 10), probabilities,
                       atol=1e-6)
    assert credits(http, addr) == Decimal("0.998")

    r = http.post(f"/v2/models/{slug}/infer", headers=key,
                  json={"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32",
                                    "data": [1, 2, 3]}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert credits(http, addr) == Decimal("0.998")  # the refused call cost nothing


def test_a_model_triton_cannot_load_is_not_approved_and_the_moderator_sees_why(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    from serving.triton_repo import MODEL_PY

    backend = _backend(server)
    slug = f"tri-broken-{time.monotonic_ns() % 10**6}"
    pub = publish(http, digits["seller"], digits["model"], digits["manifest"], slug=slug)
    # The model.py this version will get raises while Triton loads it.
    import serving.triton_repo as repo

    broken = MODEL_PY.replace("def initialize(self, args):",
                              "def initialize(self, args):\n        raise RuntimeError('no')")
    repo.MODEL_PY = broken
    try:
        r = http.post(f"/v1/admin/models/{slug}/approve", headers=admin(http),
                      json={"version": pub["version"], "reason": "ok"})
    finally:
        repo.MODEL_PY = MODEL_PY
    assert r.status_code == 503, r.text
    body = r.json()["error"]
    assert body["code"] == "backend_unavailable" and "could not load" in body["message"]
    assert "RuntimeError" in body["message"] and r.headers["Retry-After"]
    assert not backend.is_deployed(f"{slug}@1")
    queue = http.get("/v1/admin/review-queue", headers=admin(http))
    if queue.status_code == 200:  # still waiting for a decision
        assert slug in json.dumps(queue.json())


def test_a_new_version_is_another_triton_model_and_the_route_pins_it(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    manifest = {**digits["manifest"], "pricing": {"per_call": "0.005", "trial_calls": 0}}
    pub = publish(http, digits["seller"], digits["model"], manifest, slug=slug)
    assert pub["version"] == 2
    approve(http, slug, 2)
    assert {f"{slug}-v1", f"{slug}-v2"} <= _loaded(server)

    key, _ = buyer(http)
    newest = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    pinned = http.post(f"/v2/models/{slug}/versions/1/infer", headers=key, json=v2_body())
    assert (newest.headers["X-Model-Version"], newest.headers["X-Cost"]) == ("2", "0.005")
    assert (pinned.headers["X-Model-Version"], pinned.headers["X-Cost"]) == ("1", "0.00")
    assert pinned.json()["model_version"] == "1"
    r = http.post(f"/v2/models/{slug}/versions/9/infer", headers=key, json=v2_body())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_dynamic_batching_from_the_serving_options_keeps_answers_apart(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    r = http.patch(f"/v1/models/{slug}/serving", headers=digits["seller"],
                   json={"max_batch_size": 8, "batch_wait_ms": 5})
    assert r.status_code == 200, r.text
    config = _triton(server).get_model_config(f"{slug}-v2")
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000

    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    key, _ = buyer(http)

    def call(i: int) -> int:
        r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body([list(X[i])]))
        assert r.status_code == 200, r.text
        return int(r.json()["outputs"][0]["data"][0])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(call, range(24)))
    expected = _ort(digits["model"], [list(map(float, X[i])) for i in range(24)])[0]
    assert labels == expected.tolist()
    assert sum(a == b for a, b in zip(labels, y[:24], strict=True)) >= 22


def test_tritonclient_calls_the_paid_gateway(http: httpx.Client, server: tuple[str, Any],
                                             digits: dict[str, Any]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    slug = digits["slug"]
    key, addr = buyer(http)
    client = triton.InferenceServerClient(server[0].removeprefix("http://"))
    assert client.is_model_ready(slug, "1", headers=key)
    x = np.asarray([DIGIT_ZERO], dtype=np.float32)
    for binary in (True, False):
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(slug, [inp], model_version="2", headers=dict(key),
                              outputs=[triton.InferRequestedOutput("label", binary_data=binary)])
        assert result.as_numpy("label").tolist() == [0]
        assert result.get_response()["model_version"] == "2"
    assert credits(http, addr) == Decimal("0.99")
    with pytest.raises(InferenceServerException) as err:
        client.infer(slug, [inp], headers={"Authorization": "Bearer amk_nope_nope"})
    assert err.value.status() == "401"


def test_sigkilled_tritonserver_mid_traffic_503s_uncharged_then_back_ledger_matches(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug, backend = digits["slug"], _backend(server)
    svc = server[1].state.services
    key, addr = buyer(http, credits="10.00")
    restarts = backend.restarts
    stop = threading.Event()
    results: list[tuple[int, str, Any]] = []

    def traffic() -> None:
        with httpx.Client(base_url=server[0], timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
                results.append((r.status_code, r.headers.get("X-Request-Id", ""),
                                r.json()))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        until(lambda: sum(s == 200 for s, _, _ in results) >= 20, 60, "calls before the kill")
        os.kill(backend.server_pid, signal.SIGKILL)
        until(lambda: backend.restarts > restarts, 60, "tritonserver to be started again")
        mark = len(results)
        until(lambda: sum(s == 200 for s, _, _ in results[mark:]) >= 20, 60,
              "calls served after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [(s, b) for s, _, b in results if s != 200]
    answered = {rid for s, rid, _ in results if s == 200}
    print(f"\n{len(answered)} answered 200, {len(failed)} refused while Triton was down")
    assert failed, "the kill never showed"
    odd = [(s, b) for s, b in failed
           if s != 503 or b["error"]["code"] != "backend_unavailable"]
    assert not odd, odd[:3]
    assert svc.backend.is_deployed(f"{slug}@2") and f"{slug}-v2" in _loaded(server)

    account = http.get("/v1/account", headers=login(http, addr)).json()
    engine = create_engine(svc.settings.sqlalchemy_url)
    until(lambda: _ledger(engine, account["id"]) == answered, 30, "the ledger to catch up")
    paid = len(answered)  # no trial on version 2
    assert credits(http, addr) == Decimal("10.00") - paid * Decimal("0.005")
    with engine.connect() as conn:
        total = conn.execute(text("SELECT SUM(price) FROM usage_events WHERE account_id = :a"),
                             {"a": account["id"]}).scalar_one()
    assert total == paid * 5000
    engine.dispose()


def _ledger(engine: Any, account_id: int) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(
            text("SELECT id FROM usage_events WHERE account_id = :a"), {"a": account_id})}


def test_the_seller_moves_a_listing_between_backends_without_a_failed_call(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug, router = digits["slug"], server[1].state.services.backend
    assert http.get(f"/v1/models/{slug}/serving", headers=digits["seller"]).json()[
        "backend"] == "triton"
    r = http.patch(f"/v1/models/{slug}/serving", headers=digits["seller"], json={"backend": "ray"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_serving_options"
    _, stranger = signup(http, "seller")
    r = http.patch(f"/v1/models/{slug}/serving", headers=stranger, json={"backend": "local"})
    assert r.status_code == 403

    # Credits for every call the two clients make meanwhile (~1,000 a second on the local
    # backend here): a buyer who ran dry would read 402, which is not what this test is about.
    key, _ = buyer(http, credits="1000.00")
    stop, statuses = threading.Event(), []

    def traffic() -> None:
        with httpx.Client(base_url=server[0], timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
                statuses.append((r.status_code, r.json()["outputs"][0]["data"]
                                 if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for target in ("local", "triton"):
            mark = len(statuses)
            until(lambda m=mark: len(statuses) > m + 10, 30, "calls")
            r = http.patch(f"/v1/models/{slug}/serving", headers=digits["seller"],
                           json={"backend": target})
            assert r.status_code == 200 and r.json()["backend"] == target, r.text
            assert router.backend_of(f"{slug}@2") == target
            loaded = f"{slug}-v2" in _loaded(server)
            assert loaded == (target == "triton")
            mark = len(statuses)
            until(lambda m=mark: len(statuses) > m + 10, 30, "calls after the move")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    odd = [s for s in statuses if s != (200, [0])]
    assert statuses and not odd, odd[:3]


def test_delisting_unloads_every_version(http: httpx.Client, server: tuple[str, Any],
                                         digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    r = http.post(f"/v1/models/{slug}/delist", headers=digits["seller"])
    assert r.status_code == 200, r.text
    assert sorted(r.json()["undeployed"]) == [f"{slug}@1", f"{slug}@2"]
    assert not {f"{slug}-v1", f"{slug}-v2"} & _loaded(server)
    repo = _backend(server)._repository
    assert not (repo / f"{slug}-v1").exists()
    key, addr = buyer(http)
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert credits(http, addr) == Decimal("1.00")
