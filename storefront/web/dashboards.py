"""Signed-in pages: the buyer's keys, credits and usage; the seller's uploads and earnings;
the admin's review queue and credit grants. Each action calls the same service function as
the API's route, so the pages and the API share one set of rules."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import FileResponse, RedirectResponse, Response

from serving import AimarketError

from .. import alerts, apikeys, bundles, catalog, kit_orders, moderation, payments, publishing
from .. import usage as ledger
from ..deps import Id
from ..models import Account
from . import queries
from .charts import bar_chart
from .render import page
from .session import PageForbidden, check_csrf, require, services

router = APIRouter(include_in_schema=False)


def _account(request: Request, role: str) -> Account:
    with services(request).sessions() as db:
        account = require(request, db, role)
        db.expunge(account)
        return account


def _back(path: str, **flash: str) -> RedirectResponse:
    query = "&".join(f"{k}={quote(v)}" for k, v in flash.items())
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def _form_error(exc: Exception) -> str:
    if isinstance(exc, AimarketError):
        return exc.message
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    raise exc


# -- buyer -------------------------------------------------------------------------------------
@router.get("/account")
async def buyer_dashboard(request: Request, new_key: str = "", error: str = "",
                          done: str = "") -> Response:
    account = _account(request, "buyer")
    svc = services(request)
    used = await ledger.usage(svc, account, 30)
    with svc.sessions() as db:
        keys = apikeys.list_keys(db, account)
        banner = alerts.banner(db, account, datetime.now(UTC).date().isoformat())
        rules = alerts.rules_by_key(db, account)
        owned = {"licences": bundles.licences_of(db, account),
                 "exports": bundles.exports_of(db, account),
                 "kits": kit_orders.orders_of(db, account),
                 "kit_offers": kit_orders.kit_offers(db, account)}
    per_day: dict[str, int] = {}
    for d in used["days"]:
        per_day[d["date"]] = per_day.get(d["date"], 0) + d["calls"]
    chart = bar_chart(list(per_day.items()), title="Your calls per day (last 30 days)")
    billing = await run_in_threadpool(svc.billing.summary, account.id)
    return page(request, "buyer.html", account, keys=keys, usage=used, chart=chart,
                new_key=new_key, error=error, done=done, billing=billing,
                alert_banner=banner, alert_rules=rules, owned=owned,
                countries=kit_orders.countries())


@router.get("/account/exports/{export_id}/download")
def download_bundle(request: Request, export_id: str) -> Response:
    """The buyer's signed bundle, with the session (the API's route takes a token)."""
    account = _account(request, "buyer")
    with services(request).sessions() as db:
        try:
            record, slug, version = bundles.owned_export(db, export_id[:64], account)
        except AimarketError as exc:
            return page(request, "message.html", account, status=exc.status,
                        title="No such export", message=exc.message)
    return FileResponse(bundles.bundle_path(services(request).settings.data_dir, record.id),
                        media_type="application/zip",
                        filename=f"{slug}-v{version}-{record.target}.zip")


@router.post("/account/exports/{export_id}/kit-order")
async def order_kit(request: Request, export_id: str) -> Response:
    """Order a Nano Kit pre-loaded with this nano-kit bundle, shipped to the form's address
    and charged the listing's kit price from credit (the API's rules)."""
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    fields = ("name", "line1", "line2", "city", "postal_code", "country")
    try:
        address = kit_orders.Address.model_validate(
            {f: str(form.get(f, ""))[:300] for f in fields})
        order = await kit_orders.place_order(services(request), account, export_id[:64],
                                             address)
    except (AimarketError, ValidationError) as exc:
        return _back("/account", error=_form_error(exc))
    return _back("/account", done=f"Nano Kit ordered (order #{order['id']}, {order['price']} "
                                  f"USD); your credits: {order['credits']} USD.")


@router.post("/account/credits")
async def buy_credits(request: Request) -> Response:
    """Stripe mode: send the buyer to a Checkout page for prepaid credit (or a card on file
    for postpaid usage); the webhook credits the account when Stripe confirms."""
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        if form.get("action") == "postpaid":
            session = await run_in_threadpool(payments.postpaid, svc, account)
        else:
            body = payments.CheckoutRequest(amount=str(form.get("amount", "")))
            session = await run_in_threadpool(payments.checkout, svc, account, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/account", error=_form_error(exc))
    return RedirectResponse(session["url"], status_code=303)


@router.post("/account/keys")
async def create_key(request: Request) -> Response:
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        body = apikeys.NewKey(name=str(form.get("name", "")),
                              spend_cap_day=str(form.get("spend_cap_day", "")) or None)
        with svc.sessions() as db:
            created = apikeys.create_key(db, svc, account, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/account", error=_form_error(exc))
    # The secret is shown once, on the page the redirect lands on, and never stored.
    return page(request, "key_created.html", account, key=created)


@router.post("/account/keys/{key_id}")
async def change_key(request: Request, key_id: Id) -> Response:
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        with svc.sessions() as db:
            if form.get("action") == "revoke":
                apikeys.revoke_key(db, svc, account, key_id)
                return _back("/account", done="Key revoked.")
            cap = str(form.get("spend_cap_day", "")).strip()
            body = apikeys.KeyChange(name=str(form.get("name", "")) or None,
                                     spend_cap_day=cap or None)
            apikeys.change_key(db, svc, account, key_id, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/account", error=_form_error(exc))
    return _back("/account", done="Key saved.")


@router.post("/account/keys/{key_id}/alerts")
async def set_alerts(request: Request, key_id: Id) -> Response:
    """A key's alert thresholds and webhook; a new webhook secret is shown once, here."""
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        body = alerts.AlertRules.model_validate({
            "daily_cap_percent": str(form.get("daily_cap_percent", "")).strip() or None,
            "credits_below": str(form.get("credits_below", "")).strip() or None,
            "trial_used_up": form.get("trial_used_up") == "on",
            "webhook_url": str(form.get("webhook_url", "")).strip() or None,
            "rotate_secret": form.get("rotate_secret") == "on"})
        with svc.sessions() as db:
            saved = alerts.put_rules(db, svc, account, key_id, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/account", error=_form_error(exc))
    if "webhook_secret" in saved:
        return page(request, "webhook_secret.html", account, saved=saved)
    return _back("/account", done="Alerts saved.")


# -- seller ------------------------------------------------------------------------------------
@router.get("/seller")
async def seller_dashboard(request: Request, uploaded: str = "", error: str = "") -> Response:
    account = _account(request, "seller")
    svc = services(request)
    with svc.sessions() as db:
        mine = catalog.seller_listings(db, account)
        earned = ledger.earnings(db, account)
        daily = queries.seller_daily(db, account.id)
    calls = bar_chart([(d["date"], d["calls"]) for d in daily],
                      title="Calls per day, demo calls included (last 30 days)")
    revenue = bar_chart([(d["date"], d["revenue_micro"] / 1e6) for d in daily],
                        title="Revenue per day, USD (last 30 days)", unit=" USD")
    billing = await run_in_threadpool(svc.billing.summary, account.id)
    return page(request, "seller.html", account, listings=mine, earnings=earned, daily=daily,
                calls_chart=calls, revenue_chart=revenue, uploaded=uploaded, error=error,
                max_mb=svc.settings.max_upload_mb, billing=billing)


@router.post("/seller/connect")
async def connect_payouts(request: Request) -> Response:
    """Stripe mode: onboard for payouts with Stripe Connect (Express)."""
    account = _account(request, "seller")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        link = await run_in_threadpool(payments.connect, svc, account)
    except AimarketError as exc:
        return _back("/seller", error=_form_error(exc))
    return RedirectResponse(link["url"], status_code=303)


@router.post("/seller/upload")
async def upload(request: Request) -> Response:
    account = _account(request, "seller")
    svc = services(request)
    max_mb = svc.settings.max_upload_mb

    def csrf(form: FormData) -> None:
        check_csrf(request, form.get("csrf"))

    try:
        sub = await publishing.read_upload(request, max_mb, check=csrf)
        published = await run_in_threadpool(publishing.publish_upload, svc, account, sub)
    except PageForbidden:
        raise
    except AimarketError as exc:
        hints = {"missing_model": "Choose the model file (.onnx) to upload.",
                 "payload_too_large": f"Models are limited to {max_mb} MB."}
        return _back("/seller", error=hints.get(exc.code, exc.message))
    return _back("/seller", uploaded=f"{published.slug} version {published.version}")


# -- admin -------------------------------------------------------------------------------------
@router.get("/admin")
def admin_dashboard(request: Request, error: str = "", done: str = "") -> Response:
    account = _account(request, "admin")
    with services(request).sessions() as db:
        queue = moderation.review_queue(db)
        log = moderation.audit_log(db)[:10]
        kits = kit_orders.open_orders(db)
    return page(request, "admin.html", account, queue=queue, log=log, kits=kits, error=error,
                done=done)


@router.post("/admin/kit-orders/{order_id}")
async def advance_kit(request: Request, order_id: Id) -> Response:
    """Move a Nano Kit order to its next state (shipping needs the tracking reference)."""
    account = _account(request, "admin")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    try:
        body = kit_orders.Advance.model_validate({
            "state": str(form.get("state", "")),
            "tracking": str(form.get("tracking", ""))[:100] or None})
        with services(request).sessions() as db:
            order = kit_orders.advance(db, account, order_id, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/admin", error=_form_error(exc))
    return _back("/admin", done=f"Kit order {order_id} is {order['state']}.")


@router.post("/admin/review/{slug}/{version}")
async def decide(request: Request, slug: str, version: Id) -> Response:
    account = _account(request, "admin")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    reason = str(form.get("reason", "")).strip()
    try:
        if form.get("decision") == "approve":
            await moderation.approve(svc, account, slug, moderation.Decision(
                version=version, reason=reason))
            return _back("/admin", done=f"Approved {slug} version {version}: it is live.")
        body = moderation.Rejection(version=version, reason=reason)
        with svc.sessions() as db:
            moderation.reject(db, account, slug, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/admin", error=_form_error(exc) if reason or not isinstance(
            exc, ValidationError) else "Write the reason for the rejection: the seller sees it.")
    return _back("/admin", done=f"Rejected {slug} version {version}.")


@router.post("/admin/credits")
async def grant(request: Request) -> Response:
    account = _account(request, "admin")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    try:
        body = payments.Grant(account_email=str(form.get("email", "")),
                              amount=str(form.get("amount", "")),
                              note=str(form.get("note", ""))[:500])
        granted = await payments.grant_credits(services(request), account, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/admin", error=_form_error(exc))
    return _back("/admin", done=f"Granted {granted['amount']} USD to {granted['account_email']}"
                                f"; their credits: {granted['credits']} USD.")
