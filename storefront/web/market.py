"""The market on the site: a seller's public page; a buyer's review, the seller's reply, an
admin hiding a review. Each calls the same service function as the API route."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from serving import AimarketError

from .. import ratings, sellers
from ..deps import Id
from .dashboards import _account, _back, _form_error
from .render import page
from .session import check_csrf, current, services

router = APIRouter(include_in_schema=False)


@router.get("/sellers/{name}")
def seller_page(request: Request, name: str) -> Response:
    with services(request).sessions() as db:
        account = current(request, db)
        try:
            profile = sellers.profile(db, name)
        except AimarketError:
            return page(request, "message.html", account, status=404, title="Not found",
                        message=f"There is no seller called '{name}'.")
    return page(request, "seller_profile.html", account, s=profile)


@router.post("/models/{slug}/reviews")
async def post_review(request: Request, slug: str) -> Response:
    account = _account(request, "buyer")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    back = f"/models/{slug}"
    try:
        stars = str(form.get("stars", ""))
        body = ratings.ReviewBody(stars=int(stars) if stars.isdigit() else 0,
                                  text=str(form.get("text", "")))

        def save() -> bool:
            with svc.sessions() as db:
                return ratings.post_review(db, account, slug, body)[1]

        created = await run_in_threadpool(save)
    except (AimarketError, ValidationError) as exc:
        return _back(back, error=_form_error(exc))
    return _back(back, done="Review posted." if created else "Review updated.")


@router.post("/models/{slug}/reviews/{review_id}/reply")
async def reply(request: Request, slug: str, review_id: Id) -> Response:
    account = _account(request, "seller")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        body = ratings.ReplyBody(text=str(form.get("text", "")))
        with svc.sessions() as db:
            ratings.reply(db, account, slug, review_id, body)
    except (AimarketError, ValidationError) as exc:
        return _back(f"/models/{slug}", error=_form_error(exc))
    return _back(f"/models/{slug}", done="Reply posted.")


@router.post("/admin/reviews/{review_id}/hide")
async def hide(request: Request, review_id: Id) -> Response:
    account = _account(request, "admin")
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    svc = services(request)
    try:
        body = ratings.HideBody(reason=str(form.get("reason", "")))
        with svc.sessions() as db:
            hidden = ratings.hide(db, account, review_id, body)
    except (AimarketError, ValidationError) as exc:
        return _back("/", error=_form_error(exc))
    return _back(f"/models/{hidden['slug']}", done=f"Review {review_id} hidden.")
