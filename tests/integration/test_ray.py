"""The ``ray`` backend on a real local Ray, started once for this module: approval deploys,
paid calls, version pinning, serving options, a killed replica (503, not charged, replaced),
delisting undeploys, and tritonclient against the paid gateway.

One real server (uvicorn in a thread, so tritonclient has a socket) on SQLite + the embedded
Valkey; the test talks HTTP to it and reads Ray's state through the app's backend.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from metering.keys import Keys
from tests.helpers import DIGIT_ZERO, v2_body
from tests.integration.journey import (
    admin,
    approve,
    buyer,
    live_app,
    publish,
    signup,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.ray]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           embedded_redis_url: str) -> Iterator[tuple[str, Any]]:
    with live_app(tmp_path_factory.mktemp("ray-data"), embedded_redis_url,
                  "the server to start Ray and listen", redis_namespace="ray:",
                  serving_backend="ray") as served:
        yield served
    assert not ray.is_initialized(), "closing the app stops the Ray it started"


@pytest.fixture(scope="module")
def http(server: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=120) as c:
        yield c


def _credits(http: httpx.Client, addr: str) -> str:
    r = http.post("/v1/auth/token", data={"username": addr, "password": "password-123"})
    me = http.get("/v1/account", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    return str(me.json()["credits"])


@pytest.fixture(scope="module")
def digits(http: httpx.Client) -> dict[str, Any]:
    """The digits MLP listed by a seller (version 1, 0.002 a call, no trial)."""
    from storefront.demo import digits as train

    model, manifest = train()
    manifest["pricing"] = {"per_call": "0.002", "trial_calls": 0}
    _, seller = signup(http, "seller")
    slug = f"ray-digits-{time.monotonic_ns() % 10**6}"
    pub = publish(http, seller, model, manifest, slug=slug)
    return {"slug": slug, "seller": seller, "model": model, "manifest": manifest,
            "version": pub["version"]}


def _backend(server: tuple[str, Any]) -> Any:
    return server[1].state.services.backend


def test_approval_deploys_a_serve_application_and_paid_calls_run_on_it(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    assert _backend(server).replicas(f"{slug}@1") == []
    approve(http, slug, 1)
    assert len(_backend(server).replicas(f"{slug}@1")) == 1  # slug-v1, one replica

    key, addr = buyer(http)
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 200, r.text
    assert r.headers["X-Cost"] == "0.002" and r.headers["X-Model-Version"] == "1"
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == [0]
    assert _credits(http, addr) == "0.998"

    r = http.post(f"/v2/models/{slug}/infer", headers=key,
                  json={"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32",
                                    "data": [1, 2, 3]}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert _credits(http, addr) == "0.998"  # the refused call cost nothing


def test_another_gateway_process_adopts_the_running_application(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    import asyncio

    from serving import ModelRef
    from serving.ray_backend import RayBackend
    from storefront.registry import model_path

    slug, backend = digits["slug"], _backend(server)
    v1 = http.get(f"/v1/models/{slug}").json()["versions"][-1]
    ref = ModelRef(key=f"{slug}@1", sha256=v1["sha256"],
                   path=model_path(server[1].state.services.settings.data_dir, v1["sha256"]),
                   latency_us=round(v1["latency_ms"] * 1000))
    before = backend.replicas(ref.key)
    other = RayBackend(wire_secret=backend._secret)  # as a second gateway would, same Ray

    async def deploy_and_call() -> Any:
        await other.deploy(ref)
        try:
            return await other.infer(ref.key, {"X": np.asarray([DIGIT_ZERO], np.float32)})
        finally:
            await other.close()  # its connections only: it did not start this Ray

    out = asyncio.run(deploy_and_call())
    assert backend.replicas(ref.key) == before  # adopted, not redeployed
    assert out["label"].tolist() == [0]


def test_a_new_version_deploys_beside_the_old_and_the_route_pins_it(
        http: httpx.Client, server: tuple[str, Any], digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    manifest = {**digits["manifest"], "pricing": {"per_call": "0.005", "trial_calls": 0}}
    pub = publish(http, digits["seller"], digits["model"], manifest, slug=slug)
    assert pub["version"] == 2
    approve(http, slug, 2)
    backend = _backend(server)
    assert backend.replicas(f"{slug}@1") and backend.replicas(f"{slug}@2")

    key, _ = buyer(http)
    newest = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    pinned = http.post(f"/v2/models/{slug}/versions/1/infer", headers=key, json=v2_body())
    assert (newest.headers["X-Model-Version"], newest.headers["X-Cost"]) == ("2", "0.005")
    assert (pinned.headers["X-Model-Version"], pinned.headers["X-Cost"]) == ("1", "0.002")
    assert pinned.json()["model_version"] == "1"
    r = http.post(f"/v2/models/{slug}/versions/9/infer", headers=key, json=v2_body())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_serving_options_are_the_sellers_and_batching_keeps_answers_apart(
        http: httpx.Client, digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    _, stranger = signup(http, "seller")
    r = http.patch(f"/v1/models/{slug}/serving", headers=stranger, json={"max_replicas": 2})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner"
    r = http.patch(f"/v1/models/{slug}/serving", headers=digits["seller"],
                   json={"min_replicas": 3, "max_replicas": 2})
    assert r.status_code == 422
    r = http.patch(f"/v1/models/{slug}/serving", headers=digits["seller"],
                   json={"max_batch_size": 8, "batch_wait_ms": 5, "max_replicas": 2,
                         "target_ongoing_requests": 4})
    assert r.status_code == 200, r.text
    got = http.get(f"/v1/models/{slug}/serving", headers=admin(http)).json()
    assert (got["max_batch_size"], got["max_replicas"], got["backend"]) == (8, 2, "ray")

    # Concurrent calls with different digits are batched on the replica; each gets its own.
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    key, _ = buyer(http)

    def call(i: int) -> int:
        r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body([list(X[i])]))
        assert r.status_code == 200, r.text
        return int(r.json()["outputs"][0]["data"][0])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(call, range(24)))
    assert sum(a == b for a, b in zip(labels, y[:24], strict=True)) >= 22


def _slow_model() -> tuple[bytes, dict[str, Any]]:
    """A real ONNX model whose run time the caller chooses: ``n`` rounds of tanh(x @ W)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [64, 64],
                           (np.eye(64, dtype=np.float32) * 0.5).ravel().tolist())
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["W"], value=w),
         helper.make_node("MatMul", ["acc", "W"], ["mm"]),
         helper.make_node("Tanh", ["mm"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 64])],
    )
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["axes"], value=axes),
         helper.make_node("Squeeze", ["n", "axes"], ["trip"]),
         helper.make_node("Constant", [], ["cond"],
                          value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
         helper.make_node("Loop", ["trip", "cond", "X"], ["Y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    manifest = {
        "title": "Slow tensor model", "description": "n rounds of tanh(x @ W)",
        "category": "test", "task": "tensor",
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 64]},
                   {"name": "n", "dtype": "int64", "shape": [1]}],
        "outputs": [{"name": "Y", "dtype": "float32", "shape": [-1, 64]}],
        "pricing": {"per_call": "0.010", "trial_calls": 0},
    }
    return model.SerializeToString(), manifest


def _slow_body(n: int) -> dict[str, Any]:
    return {"inputs": [
        {"name": "X", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64},
        {"name": "n", "shape": [1], "datatype": "INT64", "data": [n]}]}


def _replica_process(app: str) -> Any:
    """The OS process of the application's one replica (Ray titles it ServeReplica:app:...)."""
    import psutil

    found = [p for p in psutil.process_iter(["cmdline"])
             if any(f"ServeReplica:{app}:" in part for part in p.info["cmdline"] or [])]
    assert len(found) == 1, [p.info["cmdline"] for p in found]
    return found[0]


def test_a_replica_killed_mid_call_answers_503_charges_nothing_and_is_replaced(
        http: httpx.Client, server: tuple[str, Any]) -> None:
    model, manifest = _slow_model()
    _, seller = signup(http, "seller")
    slug = f"ray-slow-{time.monotonic_ns() % 10**6}"
    publish(http, seller, model, manifest, slug=slug)
    approve(http, slug, 1)
    key, addr = buyer(http)
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=_slow_body(2))
    assert r.status_code == 200, r.text
    assert _credits(http, addr) == "0.99"

    svc = server[1].state.services
    hold_sets = [h for h, _ in Keys(svc.settings.redis_namespace).hold_sets]

    def holds() -> int:  # reservations and leases in flight, over every shard
        return sum(svc.redis_sync.hlen(h) for h in hold_sets)
    backend = _backend(server)
    [victim] = backend.replicas(f"{slug}@1")
    replica = _replica_process(f"{slug}-v1")
    idle = replica.cpu_times().user
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Minutes of work unless interrupted; once its replica burns CPU the call is running
        # there (before that, Serve would still send it to a new replica).
        pending = pool.submit(http.post, f"/v2/models/{slug}/infer", headers=key,
                              json=_slow_body(50_000_000))
        until(lambda: replica.cpu_times().user > idle + 1.0, 60, "the replica to run the call")
        assert holds() >= 1  # reserved (per call, or from a lease), not yet charged
        replica.send_signal(signal.SIGKILL)  # the replica's process dies mid-call
        r = pending.result(timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "replica_unavailable"
    assert _credits(http, addr) == "0.99"  # not charged
    # the hold was released (a lease goes back within seconds), not left to the sweeper's
    # 120 s
    until(lambda: holds() == 0, 10, "the reservation to go back")

    # Serve replaces the replica; the listing answers again without anyone redeploying it.
    until(lambda: (reps := backend.replicas(f"{slug}@1")) and reps != [victim], 90,
           "a replacement replica")
    until(lambda: http.post(f"/v2/models/{slug}/infer", headers=key,
                             json=_slow_body(1)).status_code == 200, 90, "a served call")
    assert _credits(http, addr) == "0.98"


def test_tritonclient_calls_the_paid_gateway(http: httpx.Client, server: tuple[str, Any],
                                             digits: dict[str, Any]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    slug = digits["slug"]
    key, addr = buyer(http)
    client = triton.InferenceServerClient(server[0].removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "aimarket"
    meta = client.get_model_metadata(slug, headers=key)
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert client.is_model_ready(slug, "1", headers=key)

    x = np.asarray([DIGIT_ZERO], dtype=np.float32)
    for binary in (True, False):  # tritonclient's default binary tensors, and plain JSON
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        # tritonclient writes its own headers into the dict it is given: pass a fresh one
        result = client.infer(slug, [inp], model_version="1", headers=dict(key),
                              outputs=[triton.InferRequestedOutput("label", binary_data=False)])
        assert result.as_numpy("label").tolist() == [0]
        assert result.get_response()["model_version"] == "1"
    assert _credits(http, addr) == "0.996"

    with pytest.raises(InferenceServerException) as err:
        client.infer(slug, [inp], headers={"Authorization": "Bearer amk_nope_nope"})
    assert err.value.status() == "401"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata(slug)  # no key
    assert err.value.status() == "401"


def test_delisting_undeploys_every_version(http: httpx.Client, server: tuple[str, Any],
                                           digits: dict[str, Any]) -> None:
    slug = digits["slug"]
    _, stranger = signup(http, "seller")
    assert http.post(f"/v1/models/{slug}/delist", headers=stranger).status_code == 403
    r = http.post(f"/v1/models/{slug}/delist", headers=digits["seller"])
    assert r.status_code == 200, r.text
    assert sorted(r.json()["undeployed"]) == [f"{slug}@1", f"{slug}@2"]
    backend = _backend(server)
    assert backend.replicas(f"{slug}@1") == [] and backend.replicas(f"{slug}@2") == []
    key, addr = buyer(http)
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert http.get(f"/v1/models/{slug}").status_code == 404
    assert _credits(http, addr) == "1.00"


def test_a_text_model_with_a_string_input_answers_on_ray_as_on_local(
        http: httpx.Client, server: tuple[str, Any]) -> None:
    """String tensors cross the gateway's wire into the replica and back (/predict and v2
    BYTES); the answers equal the task pipeline on onnxruntime in this process."""
    from serving import parse_manifest, postprocess, prepare_call
    from serving.runtime import new_session
    from tests import task_models as tm

    model, manifest = tm.text_clf()
    _, seller = signup(http, "seller")
    slug = f"ray-text-{time.monotonic_ns() % 10**6}"
    publish(http, seller, model, {**manifest, "pricing": {"per_call": "0.001",
                                                          "trial_calls": 0}}, slug=slug)
    approve(http, slug, 1)
    assert _backend(server).replicas(f"{slug}@1")
    key, _ = buyer(http)
    payload = {"texts": ["love it, great", "awful and bad, terrible ☹"]}
    r = http.post(f"/v1/models/{slug}/predict", headers=key, json=payload)
    assert r.status_code == 200, r.text
    assert r.headers["X-Cost"] == "0.001"
    m = parse_manifest(json.dumps(manifest))
    tensors, context = prepare_call(m, payload)
    session = new_session(model)
    names = [o.name for o in session.get_outputs()]
    local = dict(zip(names, session.run(None, tensors), strict=True))
    assert r.json()["predictions"] == postprocess(m, local, context)["predictions"]
    assert [p["label"] for p in r.json()["predictions"]] == ["positive", "negative"]

    r = http.post(f"/v2/models/{slug}/infer", headers=key, json={"inputs": [
        {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": payload["texts"]}]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == local["label"].tolist()
    np.testing.assert_allclose(out["probabilities"]["data"],
                               local["probabilities"].reshape(-1), rtol=1e-6)


def test_an_idle_listing_scales_to_zero_and_its_next_call_brings_it_back(
        http: httpx.Client, server: tuple[str, Any]) -> None:
    """Idle -> zero replicas (Serve's status); the next paid call starts them again, answers
    200 and is charged once; a call that would wait past AIMARKET_MODEL_LOAD_WAIT_S answers
    503 with Retry-After and is not charged. (Last in this module: its idle pass parks every
    listing nobody is calling.)"""
    import asyncio

    from storefront.demo import digits as train

    model, manifest = train()
    manifest["pricing"] = {"per_call": "0.002", "trial_calls": 0}
    _, seller = signup(http, "seller")
    slug = f"ray-idle-{time.monotonic_ns() % 10**6}"
    publish(http, seller, model, manifest, slug=slug)
    approve(http, slug, 1)
    backend, svc = _backend(server), server[1].state.services
    ref = f"{slug}@1"

    def on_loop(coro: Any) -> Any:  # the backend lives on the server's event loop
        return asyncio.run_coroutine_threadsafe(coro, backend.loop).result(60)

    def running() -> Any:
        return http.get(f"/v1/models/{slug}/serving", headers=seller).json()["replicas_running"]

    def parked() -> bool:  # Serve runs none and the replica's actor is gone
        return backend.replicas_running(ref) == 0 and backend.replicas(ref) == []

    key, addr = buyer(http)
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 200, r.text
    assert _credits(http, addr) == "0.998" and running() == 1

    # The reaper's pass (idle for 0 s here, AIMARKET_RAY_IDLE_S in service) scales it to zero.
    assert ref in on_loop(backend.park_idle(0.0))
    until(parked, 60, "the idle listing's replica to stop")
    assert running() == 0 and backend.is_deployed(ref)  # the application stays

    backend.load_wait_s = max(backend.load_wait_s, 60.0)  # a loaded CI box starts slowly
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 200, r.text  # waited for its replica to start
    assert r.json()["outputs"][0]["data"] == [0] and r.headers["X-Cost"] == "0.002"
    assert _credits(http, addr) == "0.996"  # charged once
    assert not backend.is_parked(ref)
    # Serve's status follows its controller's loop: the replica that answered shows up there.
    until(lambda: running() == 1, 30, "Serve's status to show the woken replica running")

    # Parked again; this time the call may not wait as long as the start takes.
    assert on_loop(backend.park(ref))
    until(parked, 60, "the listing's replica to stop again")
    wait = backend.load_wait_s
    backend.load_wait_s = 0.05
    try:
        r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    finally:
        backend.load_wait_s = wait
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "backend_unavailable" and r.headers["Retry-After"] == "1"
    assert _credits(http, addr) == "0.996"  # not charged
    until(lambda: backend.replicas_running(ref) == 1, 60, "the start to go on and finish")
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 200, r.text
    assert _credits(http, addr) == "0.994"

    # The ledger holds one paid event per answered call, none for the 503.
    from sqlalchemy import func, select

    from metering import UsageEvent
    from storefront.models import Account

    def paid() -> tuple[int, int]:
        with svc.sessions() as db:
            aid = db.execute(select(Account.id).where(Account.email == addr)).scalar_one()
            n, total = db.execute(
                select(func.count(), func.coalesce(func.sum(UsageEvent.price), 0))
                .where(UsageEvent.account_id == aid, UsageEvent.kind == "paid")).one()
        return int(n), int(total)

    # Another gateway process parks it (its reaper saw it idle everywhere); this one's next
    # call finds it parked through Ray's KV store and starts it again.
    from serving import ModelRef
    from serving.ray_backend import RayBackend
    from storefront.registry import model_path

    v1 = http.get(f"/v1/models/{slug}").json()["versions"][-1]
    other = RayBackend(wire_secret=backend._secret)
    model_ref = ModelRef(key=ref, sha256=v1["sha256"],
                         path=model_path(svc.settings.data_dir, v1["sha256"]),
                         latency_us=round(v1["latency_ms"] * 1000))

    async def park_elsewhere() -> bool:
        await other.deploy(model_ref)  # adopts the running application
        try:
            return bool(await other.park(ref))
        finally:
            await other.close()

    assert asyncio.run(park_elsewhere())
    until(parked, 60, "the replica parked by the other process to stop")
    assert not backend.is_parked(ref)  # this process was not told
    r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
    assert r.status_code == 200, r.text
    assert _credits(http, addr) == "0.992"
    until(lambda: paid() == (4, 8000), 30, "the four paid calls in the ledger")
