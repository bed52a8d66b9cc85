"""Public pages: the catalog, a model's page, sign-up, login and logout."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from metering import to_micro
from serving import AimarketError, InvalidInput, TooManyRequests, model_key

from .. import accounts, edge, preload, ratings, throttle
from .. import catalog as listed
from ..accounts import NewAccount
from ..models import SIGNUP_ROLES, Account
from . import buying, queries, snippets
from .render import page
from .session import check_csrf, current, end_session, safe_next, services, start_session

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 12
SORTS = {"popular": "Most used", "newest": "Newest", "price": "Price", "latency": "Fastest",
         "rating": "Best rated"}


@router.get("/")
def catalog(request: Request, q: str = "", category: str = "", task: str = "",
            sort: str = "popular", max_price: str = "", page_no: int = 1) -> Response:
    svc = services(request)
    sort = sort if sort in SORTS else "popular"
    page_no = max(1, min(page_no, 100_000))
    error = ""
    try:
        limit = to_micro(max_price) if max_price.strip() else None
    except InvalidInput:
        limit, error = None, f"'{max_price}' is not a price; write e.g. 0.002"
    with svc.sessions() as db:
        result = listed.catalog(db, q=q[:100] or None, category=category[:60] or None,
                                task=task[:40] or None, sort=sort, page=page_no,
                                page_size=PAGE_SIZE, max_price=limit)
        cats, all_tasks = queries.categories(db), queries.tasks(db)
        account = current(request, db)
    pages = max(1, -(-result["total"] // PAGE_SIZE))
    params = {"q": q, "category": category, "task": task, "sort": sort, "max_price": max_price}

    def link(**change: Any) -> str:
        merged = {**params, **change}
        return "/?" + urlencode({k: v for k, v in merged.items() if v not in ("", None)})

    return page(request, "catalog.html", account, items=result["items"],
                total=result["total"], page_no=page_no, pages=pages, categories=cats,
                tasks=all_tasks, sorts=SORTS, params=params, link=link, error=error)


@router.get("/models/{slug}")
def model_page(request: Request, slug: str, error: str = "", done: str = "",
               export_error: str = "", export_done: str = "", checkout: str = "") -> Response:
    svc = services(request)
    table = edge.page_table(svc, slug)  # measured once per version (it builds each export)
    with svc.sessions() as db:
        account = current(request, db)
        try:
            info = listed.detail(db, slug)
        except AimarketError:
            return page(request, "message.html", account, status=404, title="Not found",
                        message=f"There is no listed model called '{slug}'.")
        manifest = listed.manifest_of(db, slug, info["version"])
        reviews = ratings.page_reviews(db, slug, account)
        buy = buying.export_box(request, db, account, slug, table)
    export_error, export_done = buying.returned_from_checkout(checkout, buy, export_error,
                                                             export_done)
    base = str(request.base_url).rstrip("/")
    cold = preload.cold_start_ms(svc.backend, model_key(slug, info["version"]))
    return page(request, "model.html", account, m=info, manifest=manifest,
                snippets=snippets.snippets(base, slug, manifest), cold_start_ms=cold,
                export_compat=table, compare=compare_form(manifest, table), reviews=reviews,
                error=error[:300], done=done[:100], buy=buy,
                export_error=export_error[:300], export_done=export_done[:300])


def compare_form(manifest: Any, table: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """What the "Compare with the export" box offers: the exports this model has (target,
    precision, agreement at review), the input control of its task and an example body."""
    if not table:
        return None
    choices = [{"value": f"{row['target']}:{p}", "label": f"{row['target']} {p}"
                + (f" (agreement at review {r['agreement']:.2%})" if row["measure"]
                   == "top1_agreement" else f" (max |diff| at review {r['max_abs_diff']:.3g})")}
               for row in table if row["target"] != "onnx"
               for p, r in row["results"].items()]
    if not choices:
        return None
    task = manifest.task
    control = ("image" if task in ("image-classification", "object-detection",
                                   "image-segmentation")
               else "audio" if task == "audio-classification"
               else "text" if task in ("text-classification", "text-embedding") else "json")
    example = None
    if control == "json" and manifest.examples:
        from export.calibration import example_payload

        example = json.dumps(example_payload(manifest, manifest.examples[0]))
    return {"choices": choices, "control": control, "example": example}


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    with services(request).sessions() as db:
        account = current(request, db)
    return page(request, "login.html", account, next=safe_next(next), error="", email="")


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    email, password = str(form.get("email", "")).lower(), str(form.get("password", ""))
    target = safe_next(str(form.get("next", "/")))
    svc = services(request)
    address = throttle.request_address(request, svc)
    try:
        await throttle.check_login(svc, address, email)
    except TooManyRequests as exc:
        return _throttled(page(request, "login.html", None, status=429, next=target,
                               email=email, error=exc.message), exc)

    def find() -> Account | None:
        with svc.sessions() as db:
            return accounts.find_account(db, email)

    account = await run_in_threadpool(find)
    ok = await run_in_threadpool(accounts.authenticate, account, password)
    if not ok or account is None:
        await throttle.login_failed(svc, address, email)
        return page(request, "login.html", None, status=401, next=target, email=email,
                    error="Wrong e-mail or password.")
    response = RedirectResponse(target, status_code=303)
    start_session(response, request, svc, account)
    return response


@router.get("/signup")
def signup_form(request: Request, role: str = "buyer", next: str = "/account") -> Response:
    return page(request, "signup.html", None, role=role if role in SIGNUP_ROLES
                else "buyer", next=safe_next(next), error="", email="")


@router.post("/signup")
async def signup(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    email, role = str(form.get("email", "")), str(form.get("role", "buyer"))
    target = safe_next(str(form.get("next", "/account")))
    try:
        await throttle.check_signup(svc, throttle.request_address(request, svc))
    except TooManyRequests as exc:
        return _throttled(page(request, "signup.html", None, status=429, role=role,
                               next=target, email=email, error=exc.message), exc)
    try:
        body = NewAccount(email=email, password=str(form.get("password", "")), role=role,
                          name=str(form.get("name", ""))[:120],
                          handle=str(form.get("handle", "")).strip()[:40] or None)
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return page(request, "signup.html", None, status=422, role=role, next=target,
                    email=email, error=f"Check the form: {msg}")

    def create() -> Account:
        with svc.sessions() as db:
            return accounts.create_account(db, body)

    try:
        account = await run_in_threadpool(create)
    except AimarketError as exc:
        return page(request, "signup.html", None, status=exc.status, role=role, next=target,
                    email=email, error=exc.message)
    response = RedirectResponse(target if role == "buyer" or target != "/account"
                                else "/seller", status_code=303)
    start_session(response, request, svc, account)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)

    def revoke() -> None:  # the cookie alone is not the session: end it on the server
        with svc.sessions() as db:
            account = current(request, db)
            if account is not None:
                accounts.revoke_sessions(db, account)

    await run_in_threadpool(revoke)
    response = RedirectResponse("/", status_code=303)
    end_session(response)
    return response


def _throttled(response: Response, exc: TooManyRequests) -> Response:
    response.headers.update(exc.headers or {})
    return response
