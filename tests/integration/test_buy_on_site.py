"""Buying on the site (issue 17): the export licence on the model page from credits, a bundle
built in the background with its progress page, the download and its verification."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from export import verify
from tests.helpers import bearer, grant, signup
from tests.integration.journey import until

pytestmark = pytest.mark.integration
SLUG = "iris-species"


@pytest.fixture
def web(client: Any) -> Iterator[Any]:
    client.cookies.clear()
    yield client
    client.cookies.clear()


def _csrf(c: Any, path: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', c.get(path).text)
    assert found is not None
    return found.group(1)


def _log_in(c: Any, addr: str) -> str:
    c.cookies.clear()
    r = c.post("/login", data={"email": addr, "password": "password-123",
                               "csrf": _csrf(c, "/login"), "next": f"/models/{SLUG}"},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return _csrf(c, f"/models/{SLUG}")


def _flash(r: Any, kind: str) -> str:
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(f"/models/{SLUG}?") and location.endswith("#export"), location
    query = parse_qs(urlparse(location.removesuffix("#export")).query)
    assert kind in query, location
    return unquote(query[kind][0])


def _in_state(c: Any, job: str, state: str) -> str | None:
    """The job's page once the job is in ``state`` (else None, to poll again)."""
    text: str = c.get(job).text
    return text if f'data-state="{state}"' in text else None


def _post(c: Any, path: str, **form: str) -> Any:
    return c.post(path, data=form, follow_redirects=False)


def test_a_buyer_buys_the_licence_on_the_model_page_and_builds_a_bundle(web: Any) -> None:
    addr, token = signup(web, "buyer")
    csrf = _log_in(web, addr)
    page = web.get(f"/models/{SLUG}").text
    assert "Buy the export licence (5.00 USD from credits)" in page
    assert "Pay by card" not in page  # ledger-only mode: credits only
    assert 'name="choice"' not in page  # no target picker before the licence

    buy = f"/models/{SLUG}/purchase"
    assert _post(web, buy).status_code == 403  # no CSRF token
    assert _post(web, buy, csrf="0" * 64).status_code == 403  # a forged one
    error = _flash(_post(web, buy, csrf=csrf), "export_error")
    assert error == "the export license costs 5.00 USD and your credits are 0.00 USD"
    shown = web.get(f"/models/{SLUG}", params={"export_error": error}).text
    assert "your credits are 0.00 USD" in shown and 'role="alert"' in shown
    r = web.post("/v1/exports", headers=bearer(token), json={"slug": SLUG, "target": "onnx"})
    assert r.status_code == 403  # the refused purchase left no licence behind

    grant(web, addr, "12.00")
    done = _flash(_post(web, buy, csrf=csrf), "export_done")
    assert "You hold the export licence" in done and "your credits: 7.00 USD" in done
    assert web.get("/v1/account", headers=bearer(token)).json()["credits"] == "7.00"
    again = _flash(_post(web, buy, csrf=csrf), "export_error")
    assert "already hold" in again
    assert web.get("/v1/account", headers=bearer(token)).json()["credits"] == "7.00"

    page = web.get(f"/models/{SLUG}").text
    assert "You hold the export licence of this model" in page
    options = re.findall(r'<option value="([a-z0-9-]+:[a-z0-9]+)"', page)
    assert options[:3] == ["onnx:fp32", "onnx-int8:int8", "onnx-fp16:fp16"]
    assert {"nano-kit:fp16", "jetson-orin:fp16", "jetson-orin:int8"} <= set(options)
    # iris keeps its weights in ONNX-ML operators: the compatibility table says no int8
    assert re.search(r'value="onnx-int8:int8" disabled>[^<]*not exportable', page)

    build = f"/models/{SLUG}/exports"
    assert _post(web, build, choice="onnx:fp32").status_code == 403  # no CSRF token
    assert "unknown target" in _flash(_post(web, build, csrf=csrf, choice="tflite:fp32"),
                                      "export_error")
    assert "precision" in _flash(_post(web, build, csrf=csrf, choice="onnx:int8"),
                                 "export_error")
    r = _post(web, build, csrf=csrf, choice="onnx:fp32")
    assert r.status_code == 303 and r.headers["location"].startswith("/account/exports/jobs/")
    job = r.headers["location"]
    first = web.get(job)
    assert first.status_code == 200 and "iris-species" in first.text
    if 'data-state="done"' not in first.text:  # still running: the page reloads itself
        assert '<meta http-equiv="refresh" content="2">' in first.text

    ready = until(lambda: _in_state(web, job, "done"), deadline_s=120,
                  what="the bundle built in the background")
    assert 'http-equiv="refresh"' not in ready
    assert "aimarket verify iris-species-v1-onnx.zip" in ready
    download = re.search(r'href="(/account/exports/[0-9a-f]+/download)"', ready)
    assert download is not None
    blob = web.get(download.group(1))
    assert blob.status_code == 200 and blob.headers["content-type"] == "application/zip"
    pem = web.get("/v1/exports/public-key").json()["public_key_pem"]
    licence = verify(blob.content, pem)
    assert licence["licensee"] == addr
    assert licence["license_id"] in ready
    mine = web.get("/v1/exports", headers=bearer(token)).json()["items"]
    assert [e["license_id"] for e in mine] == [licence["license_id"]]
    assert job.rsplit("/", 1)[1][:8] in web.get(f"/models/{SLUG}").text  # the recent builds

    # the API keeps answering with the finished export, synchronously
    r = web.post("/v1/exports", headers=bearer(token), json={"slug": SLUG, "target": "onnx"})
    assert r.status_code == 201 and r.json()["agreement"] >= 0.95

    # a build that cannot be made fails with the reason on its page
    r = _post(web, build, csrf=csrf, choice="onnx-int8:int8")
    failed_job = r.headers["location"]
    failed = until(lambda: _in_state(web, failed_job, "failed"), deadline_s=120,
                   what="the int8 build to fail")
    assert 'role="alert"' in failed and "int8" in failed and "refresh" not in failed

    # someone else's build does not exist for them; signed out, the page asks to log in
    other, _ = signup(web, "buyer")
    _log_in(web, other)
    assert web.get(job).status_code == 404
    web.cookies.clear()
    r = web.get(job, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    page = web.get(f"/models/{SLUG}").text
    assert "Log in</a> to buy it" in page and "Buy the export licence" not in page



def test_a_build_left_queued_by_a_stopped_process_is_built_once_at_the_next_start(
        client: Any) -> None:
    """A job row still queued (its process stopped before a thread took it) is queued again
    by ``resume`` at start; two processes resuming it at once build it once."""
    import uuid

    from sqlalchemy import select

    from storefront import export_jobs
    from storefront.models import Account, ExportJob

    addr, token = signup(client, "buyer")
    grant(client, addr, "5.00")
    assert client.post(f"/v1/models/{SLUG}/purchase", headers=bearer(token)).status_code == 201
    svc = client.app.state.services
    with svc.sessions() as db:
        buyer = db.execute(select(Account).where(Account.email == addr)).scalar_one()
        job_id = uuid.uuid4().hex
        db.add(ExportJob(id=job_id, buyer_id=buyer.id, slug=SLUG, target="onnx",
                         precision=None, state="queued", error=""))
        db.commit()

    assert export_jobs.resume(svc) >= 1
    export_jobs.resume(svc)  # a second gateway process starting at the same time

    def finished() -> str | None:
        with svc.sessions() as db:
            job = db.get(ExportJob, job_id)
            return job.state if job is not None and job.state in ("done", "failed") else None

    assert until(finished, deadline_s=120, what="the resumed build") == "done"
    exports = client.get("/v1/exports", headers=bearer(token)).json()["items"]
    assert len(exports) == 1 and exports[0]["target"] == "onnx"
