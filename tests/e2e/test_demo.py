"""The /try/{slug} demos against a real `aimarket up`, called with gradio_client."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from storefront.demo import digit_png
from tests.e2e.test_journey import running

pytestmark = pytest.mark.e2e
QUOTA = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo")
    with running(data, extra_env={"AIMARKET_DEMO_CALLS_PER_DAY": str(QUOTA)}) as (url, env):
        yield url, data


def _calls_served(url: str, slug: str) -> int:
    return httpx.get(f"{url}/v1/models/{slug}").json()["calls_served"]


def test_gradio_client_calls_demos_within_the_daily_quota(server) -> None:
    url, data = server
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    image = data / "digit.png"
    image.write_bytes(base64.b64decode(digit_png(X[7])))
    digits = Client(f"{url}/try/handwritten-digits/", verbose=False)
    label, left = digits.predict(handle_file(str(image)), api_name="/predict")
    assert label["label"] == str(y[7]) and left == f"{QUOTA - 1} free demo calls left today"

    iris = Client(f"{url}/try/iris-species/", verbose=False)
    api = iris.view_api(return_format="dict", print_info=False)
    assert [p["parameter_name"] for p in api["named_endpoints"]["/predict"]["parameters"]] == \
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    label, left = iris.predict(sepal_length=6.7, sepal_width=3.0, petal_length=5.2,
                               petal_width=2.3, api_name="/predict")
    assert label["label"] == "virginica" and left == "1 free demo call left today"
    iris.predict(5.1, 3.5, 1.4, 0.2, api_name="/predict")
    with pytest.raises(AppError, match="free demo calls of today are used up"):
        iris.predict(5.1, 3.5, 1.4, 0.2, api_name="/predict")

    # Counted for the seller (the ledger flush is asynchronous), charged to nobody.
    deadline = time.monotonic() + 15
    while _calls_served(url, "iris-species") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for the flusher, not timing it
    assert _calls_served(url, "iris-species") == 2
    assert _calls_served(url, "handwritten-digits") == 1


def test_signed_in_buyer_demo_uses_trial_calls(server) -> None:
    url, _ = server
    addr = "demo-buyer@example.com"
    httpx.post(f"{url}/v1/accounts", json={"email": addr, "password": "buyer-pass",
                                           "role": "buyer"})
    token = httpx.post(f"{url}/v1/auth/token",
                       data={"username": addr, "password": "buyer-pass"}).json()["access_token"]
    wine = Client(f"{url}/try/wine-cultivar/", verbose=False,
                  headers={"Cookie": f"am_session={token}"})
    _, left = wine.predict(*([13.0] * 13), api_name="/predict")
    assert left.startswith("9 free trial calls left on this model")
    usage = httpx.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {token}"}).json()
    deadline = time.monotonic() + 15
    while not usage["listings"] and time.monotonic() < deadline:
        time.sleep(0.2)
        usage = httpx.get(f"{url}/v1/usage",
                          headers={"Authorization": f"Bearer {token}"}).json()
    assert usage["listings"] == [{"slug": "wine-cultivar", "calls": 1, "trial_calls": 1,
                                  "paid_calls": 0, "spend": "0.00"}]


def test_unknown_demo_is_404(server) -> None:
    url, _ = server
    r = httpx.get(f"{url}/try/no-such-model/")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
