"""Buyers' ratings and reviews, the seller's reply, an admin's hiding."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from .. import ratings
from ..deps import Admin, Buyer, Id, Seller, SessionDep
from ..ratings import HideBody, ReplyBody, ReviewBody

router = APIRouter(tags=["reviews"])


@router.post("/v1/models/{slug}/reviews", status_code=201)
def post_review(slug: str, body: ReviewBody, buyer: Buyer, db: SessionDep,
                response: Response) -> dict[str, Any]:
    """Rate a model 1-5 stars with a text: verified buyers only (a paid call or a purchase of
    it; else 403 ``not_a_verified_buyer``). One review per buyer and model: sending again
    edits it (200)."""
    review, created = ratings.post_review(db, buyer, slug, body)
    if not created:
        response.status_code = 200
    return review


@router.get("/v1/models/{slug}/reviews")
def list_reviews(slug: str, db: SessionDep,
                 page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> dict[str, Any]:
    """The model's visible reviews, newest first, and its rating ``{average, count}``."""
    return ratings.list_reviews(db, slug, page)


@router.post("/v1/models/{slug}/reviews/{review_id}/reply", status_code=201)
def reply(slug: str, review_id: Id, body: ReplyBody, seller: Seller, db: SessionDep
          ) -> dict[str, Any]:
    """The model's seller answers a review, once (409 ``already_replied`` after)."""
    return ratings.reply(db, seller, slug, review_id, body)


@router.post("/v1/admin/reviews/{review_id}/hide")
def hide(review_id: Id, admin: Admin, db: SessionDep, body: HideBody | None = None
         ) -> dict[str, Any]:
    """Hide a review from the site and the API; the decision goes to the audit log."""
    return ratings.hide(db, admin, review_id, body or HideBody())
