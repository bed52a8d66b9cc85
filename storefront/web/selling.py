"""The seller's listing page on the site: edit the description, prices and trial calls and
the serving options, delist and relist, deprecate a version, publish a new version. The same
service functions as the API's routes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from serving import AimarketError

from .. import lifecycle, listing_edits
from ..deployments import serving_options
from ..deps import Id
from .dashboards import _account, _back, _form_error
from .render import page
from .session import check_csrf, services

router = APIRouter(include_in_schema=False)


@router.get("/seller/models/{slug}")
def listing_page(request: Request, slug: str, error: str = "", done: str = "") -> Response:
    account = _account(request, "seller")
    with services(request).sessions() as db:
        try:
            listing = listing_edits.own_listing(db, account, slug)
        except AimarketError as exc:
            return page(request, "message.html", account, status=exc.status,
                        title="Not yours", message=exc.message)
        settings = listing_edits.listing_settings(db, listing)
        options = asdict(serving_options(db, listing.id))
    svc = services(request)
    options["backend"] = options["backend"] or svc.backend.name
    return page(request, "seller_listing.html", account, l=settings, error=error[:300],
                done=done[:100], serving=options, backends=svc.settings.enabled_backends(),
                max_mb=svc.settings.max_upload_mb)


def _change(form: Any) -> listing_edits.ListingChange:
    """The edit form: every field is sent; an empty price is 'not offered' (export, kit) or
    'unchanged' (per call, trial calls)."""
    values: dict[str, Any] = {"description": str(form.get("description", ""))}
    for name in ("per_call", "trial_calls"):
        raw = str(form.get(name, "")).strip()
        if raw:
            values[name] = raw
    for name in ("export_price", "kit_price"):
        values[name] = str(form.get(name, "")).strip() or None
    return listing_edits.ListingChange(**values)


@router.post("/seller/models/{slug}")
async def edit(request: Request, slug: str) -> Response:
    account = _account(request, "seller")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    back = f"/seller/models/{slug}"
    try:
        change = _change(form)
        with svc.sessions() as db:
            listing_edits.edit(svc, db, account, slug, change)
    except (AimarketError, ValidationError) as exc:
        return _back(back, error=_form_error(exc))
    return _back(back, done="Saved: calls from now on use the new prices.")


@router.post("/seller/models/{slug}/status")
async def status(request: Request, slug: str) -> Response:
    account = _account(request, "seller")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    listed = form.get("action") == "relist"
    try:
        if listed:
            with svc.sessions() as db:
                listing_edits.relist(svc, db, account, slug)
        else:
            await listing_edits.delist(svc, account, slug)
    except AimarketError as exc:
        return _back(f"/seller/models/{slug}", error=exc.message)
    return _back(f"/seller/models/{slug}", done="Listed again." if listed else
                 "Delisted: off the catalog, calls answer 404.")


@router.post("/seller/models/{slug}/versions/{version}/deprecate")
async def deprecate(request: Request, slug: str, version: Id) -> Response:
    account = _account(request, "seller")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        body = lifecycle.Deprecation(sunset=str(form.get("sunset", "")))
        with svc.sessions() as db:
            lifecycle.deprecate(db, account, slug, version, body)
        svc.registry.invalidate(slug)
    except (AimarketError, ValidationError) as exc:
        return _back(f"/seller/models/{slug}", error=_form_error(exc))
    return _back(f"/seller/models/{slug}", done=f"Version {version} deprecated.")


SERVING_FIELDS = ("min_replicas", "max_replicas", "max_batch_size", "batch_wait_ms",
                  "batching", "backend")


@router.post("/seller/models/{slug}/serving")
async def serving(request: Request, slug: str) -> Response:
    """The serving form: replicas, batching and (where several are enabled) the backend;
    an empty field keeps its value."""
    account = _account(request, "seller")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    back = f"/seller/models/{slug}"
    sent = {k: str(form.get(k, "")).strip() for k in SERVING_FIELDS}
    try:
        change = listing_edits.ServingChange.model_validate({k: v for k, v in sent.items() if v})
        await listing_edits.change_serving(services(request), account, slug,
                                           change.model_dump(exclude_none=True))
    except (AimarketError, ValidationError) as exc:
        return _back(back, error=_form_error(exc))
    return _back(back, done="Serving options saved and applied to the live versions.")
