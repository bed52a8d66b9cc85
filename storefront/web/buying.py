"""Buying on the site: the export licence on the model page (from credits, or by card in
Stripe mode), a bundle built in the background, and the build's page (progress, then the
download and how to verify it). The same service functions as the API's routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from metering import format_usd
from serving import AimarketError

from .. import bundles, export_jobs, purchases
from ..models import Account, ExportJob
from .dashboards import _account, _back, _form_error
from .render import page
from .session import check_csrf, services

router = APIRouter(include_in_schema=False)


def export_box(request: Request, db: Session, account: Account | None, slug: str,
               export_compat: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What the model page's export section needs: the signed-in buyer's licence, whether a
    card payment is offered, the target picker and the buyer's recent builds."""
    box: dict[str, Any] = {"licence": None, "card": False, "targets": [], "jobs": []}
    if account is None:
        return box
    try:
        listing, _ = purchases.live_listing(db, slug)
    except AimarketError:
        return box
    licence = purchases.licence_of(db, account, listing.id)
    box["card"] = services(request).billing.mode == "stripe"
    if licence is not None:
        box["licence"] = {"id": licence.id, "price": format_usd(licence.price),
                          "created_at": licence.created_at.isoformat()}
        box["targets"] = purchases.target_choices(export_compat)
        jobs = db.execute(select(ExportJob).where(ExportJob.buyer_id == account.id,
                                                  ExportJob.slug == slug)
                          .order_by(ExportJob.created_at.desc()).limit(5)).scalars()
        box["jobs"] = [export_jobs.view(db, j.id, account) for j in jobs]
    return box


def returned_from_checkout(checkout: str, box: dict[str, Any], error: str, done: str
                           ) -> tuple[str, str]:
    """The flash of a buyer back from Stripe Checkout (``?checkout=success|cancelled``)."""
    if checkout == "cancelled" and not box["licence"]:
        return "The card payment was cancelled; nothing was charged.", done
    if checkout == "success":
        return error, ("Thank you: your card payment bought the export licence."
                       if box["licence"] else "Thank you: the licence is granted as soon as "
                       "Stripe confirms the payment; reload this page in a moment.")
    return error, done


def _model(slug: str, **flash: str) -> RedirectResponse:
    response = _back(f"/models/{slug}", **flash)
    response.headers["location"] += "#export"
    return response


@router.post("/models/{slug}/purchase")
async def buy(request: Request, slug: str) -> Response:
    """Buy the export licence from credits, or (``action=card``, Stripe mode) go to a
    Checkout page for it; the webhook grants it when Stripe confirms the payment."""
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    slug = slug[:80]
    try:
        if form.get("action") == "card":
            session = await run_in_threadpool(purchases.licence_checkout, svc, account, slug)
            return RedirectResponse(session["url"], status_code=303)
        bought = await purchases.buy_licence(svc, account, slug)
    except AimarketError as exc:
        return _model(slug, export_error=_form_error(exc))
    return _model(slug, export_done=f"You hold the export licence of {slug} ({bought['price']}"
                                    f" USD paid; your credits: {bought['credits']} USD). "
                                    "Pick a target and build the bundle.")


@router.post("/models/{slug}/exports")
async def build(request: Request, slug: str) -> Response:
    """Queue the build of a bundle; the job's page follows it."""
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    slug = slug[:80]
    try:
        job_id = await run_in_threadpool(export_jobs.start, svc, account, slug,
                                         str(form.get("choice", ""))[:40])
    except AimarketError as exc:
        return _model(slug, export_error=_form_error(exc))
    return RedirectResponse(f"/account/exports/jobs/{job_id}", status_code=303)


@router.get("/account/exports/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    """A build's progress (the page reloads itself every 2 s until it is finished), then the
    bundle's download link and the ``aimarket verify`` line; or why it failed."""
    account = _account(request, "buyer")
    with services(request).sessions() as db:
        try:
            job = export_jobs.view(db, job_id[:64], account)
            made = None
            if job["state"] == "done" and job["export_id"]:
                made = bundles.export_json(*bundles.owned_export(db, job["export_id"],
                                                                 account))
        except AimarketError as exc:
            return page(request, "message.html", account, status=exc.status,
                        title="No such build", message=exc.message)
    filename = (f"{made['slug']}-v{made['version']}-{made['target']}.zip" if made else "")
    return page(request, "export_job.html", account, job=job, export=made, filename=filename,
                states=export_jobs.ACTIVE + ("done",))
