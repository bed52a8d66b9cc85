"""``aimarket up --workers 2`` on the default embedded stores (SQLite + the parent's Valkey):
a trial quota exact across workers, paid calls counted once in the ledger, /metrics summed over
the workers, and a second gateway on the same embedded stores refused with what to set."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import v2_body
from tests.integration.gateways import cli, gateway, gateway_env
from tests.integration.journey import admin, approve, buyer, login, publish, signup, until

pytestmark = [pytest.mark.integration]
CALLS = 40


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("workers")
    env = gateway_env(data / "d")
    with gateway(env, "--workers", "2", log=data / "up.log") as url:
        yield {"url": url, "env": env, "data": data}


def _listing(http: httpx.Client) -> str:
    from storefront.demo import digits

    model, manifest = digits()
    manifest["pricing"] = {"per_call": "0.002", "trial_calls": 5}
    _, seller = signup(http, "seller")
    slug = publish(http, seller, model, manifest, slug="two-workers")["slug"]
    approve(http, slug, 1)
    return str(slug)


def _calls(url: str, slug: str, key: dict[str, str], n: int) -> list[int]:
    """``n`` calls at once, each on its own connection (so that both workers take some)."""
    def one(_: int) -> int:
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post(f"/v2/models/{slug}/infer", headers=key, json=v2_body()).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def _counted(url: str, slug: str) -> float:
    """aimarket_calls_total of the listing as one scrape (a fresh connection) reports it."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(m.group(1)) for m in re.finditer(
        rf'^aimarket_calls_total{{[^}}]*listing="{slug}"[^}}]*}} (\S+)$', text, re.M))


def test_two_workers_keep_one_trial_quota_and_count_paid_calls_once(
        served: dict[str, Any]) -> None:
    url = served["url"]
    with httpx.Client(base_url=url, timeout=120) as http:
        slug = _listing(http)
        key, addr = buyer(http, credits=None)
        codes = _calls(url, slug, key, 20)  # 5 trial calls, then no credit
        assert sorted(codes) == [200] * 5 + [402] * 15

        r = http.post("/v1/admin/credits", headers=admin(http),
                      json={"account_email": addr, "amount": "1.00"})
        assert r.status_code == 201, r.text
        assert _calls(url, slug, key, CALLS) == [200] * CALLS

        session = login(http, addr)

        def flushed() -> dict[str, Any] | None:
            usage = http.get("/v1/usage", headers=session).json()
            return usage if usage["total"]["calls"] == 5 + CALLS else None

        usage = until(flushed, 60, "the flusher to write every call to the ledger")
        assert (usage["total"]["trial_calls"], usage["total"]["paid_calls"]) == (5, CALLS)
        assert usage["total"]["spend"] == "0.08" and usage["credits"] == "0.92"
    # every scrape, whichever worker answers it, counts the calls of both workers
    assert {_counted(url, slug) for _ in range(6)} == {5.0 + CALLS}

    done = cli("ledger", "reconcile", env=served["env"])
    assert done.exit_code == 0, done.output
    assert "Redis agrees with the ledger" in done.output


def test_a_second_gateway_on_the_embedded_stores_says_what_to_set(
        served: dict[str, Any]) -> None:
    done = cli("up", "--port", "1", env=served["env"])
    assert done.exit_code == 2
    message = " ".join(done.stderr.split())
    assert "another aimarket process already serves from" in message
    assert "AIMARKET_REDIS_URL" in message and "AIMARKET_DATABASE_URL" in message
    assert "--workers" in message


def test_workers_need_a_shared_ray_cluster(tmp_path: Path) -> None:
    done = cli("up", "--workers", "2", "--port", "1",
               env=gateway_env(tmp_path / "d", serving_backend="ray"))
    assert done.exit_code == 2
    assert "AIMARKET_RAY_ADDRESS" in done.stderr
