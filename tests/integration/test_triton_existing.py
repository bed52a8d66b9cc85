"""``AIMARKET_TRITON_URL``: the app uses a Triton server it did not start. Here that is a second,
separately started bundled tritonserver in explicit model-control mode reading its own
repository; the app writes versions there in the ``python`` format and loads / unloads them
through the repository API. A version the server lost (evicted) is loaded again by the call
that finds it missing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import v2_body

pytestmark = [pytest.mark.integration, pytest.mark.triton]
pytest.importorskip("pytriton")
tritonhttp = pytest.importorskip("tritonclient.http")

from tests.integration.journey import (  # noqa: E402
    approve,
    buyer,
    live_app,
    publish,
    signup,
    until,
)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from serving.triton_server import TritonProcess

    proc = TritonProcess(tmp_path_factory.mktemp("own-triton"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedded_redis_url: str,
           triton: Any) -> Iterator[tuple[str, Any]]:
    with live_app(tmp_path_factory.mktemp("triton-ext-data"), embedded_redis_url,
                  "the server to listen", redis_namespace="tritonext:",
                  serving_backend="triton", triton_url=f"http://{triton.url}",
                  triton_model_repository=triton.repository,
                  triton_repository_format="python") as (url, app):
        assert app.state.services.backend.server_pid is None  # it started no server of its own
        yield url, app
    assert triton.alive()  # closing the app leaves the server it did not start running


def _ready(triton: Any) -> set[str]:
    client = tritonhttp.InferenceServerClient(triton.url)
    return {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}


def test_versions_are_written_into_the_servers_repository_and_loaded_there(
        server: tuple[str, Any], triton: Any) -> None:
    from storefront.demo import digits

    with httpx.Client(base_url=server[0], timeout=120) as http:
        model, manifest = digits()
        manifest["pricing"] = {"per_call": "0.002", "trial_calls": 0}
        _, seller = signup(http, "seller")
        slug = f"ext-digits-{time.monotonic_ns() % 10**6}"
        publish(http, seller, model, manifest, slug=slug)
        approve(http, slug, 1)
        folder = Path(triton.repository) / f"{slug}-v1"
        assert (folder / "config.pbtxt").exists() and (folder / "1" / "model.py").exists()
        assert f"{slug}-v1" in _ready(triton)

        key, _ = buyer(http)
        r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
        assert r.status_code == 200 and r.headers["X-Cost"] == "0.002", r.text
        assert r.json()["outputs"][0]["data"] == [0]

        # The server drops the model (an operator, memory pressure): the next call loads it
        # again and is answered.
        tritonhttp.InferenceServerClient(triton.url).unload_model(f"{slug}-v1")
        until(lambda: f"{slug}-v1" not in _ready(triton), 30, "the unload")
        r = http.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body())
        assert r.status_code == 200, r.text
        assert f"{slug}-v1" in _ready(triton)

        r = http.post(f"/v1/models/{slug}/delist", headers=seller)
        assert r.status_code == 200, r.text
        assert f"{slug}-v1" not in _ready(triton) and not folder.exists()
