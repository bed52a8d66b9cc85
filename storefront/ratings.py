"""Buyers' ratings and reviews of a listing: verified buyers only, one per buyer and listing
(editable), a seller's single reply, an admin's hiding (in the audit log), and the listing's
rating kept on its row for the catalog.

Review text is the buyer's, so hostile: it is stored as sent and only ever rendered escaped
(Jinja's autoescape on the pages; JSON is not markup)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import exists, false, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from metering import UsageEvent, utcnow
from serving import Conflict, Forbidden, NotFound

from .models import Account, Listing, ListingReview, ListingVersion, Purchase, Review

PAGE_SIZE = 20


class ReviewBody(BaseModel):
    stars: int = Field(ge=1, le=5)
    text: str = Field("", max_length=4000)


class ReplyBody(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class HideBody(BaseModel):
    reason: str = Field("", max_length=2000)


def rating_json(listing: Listing) -> dict[str, Any]:
    """``{average, count}`` of a listing's visible reviews (average None without one)."""
    count = listing.rating_count or 0
    return {"average": round(listing.rating_milli / 1000, 2) if count else None,
            "count": count}


def _listed(db: Session, slug: str, *, lock: bool = False) -> Listing:
    q = select(Listing).where(Listing.slug == slug, Listing.status == "listed")
    if lock:  # review writes of one listing take turns (see refresh_rating)
        q = q.with_for_update()
    listing = db.execute(q).scalar_one_or_none()
    if listing is None:
        raise NotFound(f"no listed model '{slug}'", code="model_not_found")
    return listing


def is_verified_buyer(db: Session, account_id: int, listing_id: int) -> bool:
    """At least one paid call of the listing in the ledger, or a purchase of it."""
    paid = exists().where(UsageEvent.account_id == account_id,
                          UsageEvent.listing_id == listing_id, UsageEvent.kind == "paid")
    bought = exists().where(Purchase.buyer_id == account_id, Purchase.listing_id == listing_id)
    return bool(db.execute(select(paid | bought)).scalar())


def review_json(r: ListingReview, author: str | None) -> dict[str, Any]:
    return {
        "id": r.id, "stars": r.stars, "text": r.text, "author": author,
        "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
        "edited": r.updated_at != r.created_at,
        "reply": None if r.reply is None else {
            "text": r.reply, "at": r.replied_at.isoformat() if r.replied_at else None},
    }


def refresh_rating(db: Session, listing_id: int) -> None:
    """Recount the listing's visible reviews onto its row, in the caller's transaction. The
    row is locked first (PostgreSQL), so of two review changes at once the later recount
    sees the earlier one; the average is integer arithmetic, rounded half up."""
    db.execute(select(Listing.id).where(Listing.id == listing_id).with_for_update())
    n, total = db.execute(
        select(func.count(), func.coalesce(func.sum(ListingReview.stars), 0))
        .where(ListingReview.listing_id == listing_id, ListingReview.hidden == false())).one()
    n, total = int(n), int(total)
    milli = (total * 1000 + n // 2) // n if n else 0
    db.execute(update(Listing).where(Listing.id == listing_id)
               .values(rating_count=n, rating_milli=milli))


def post_review(db: Session, buyer: Account, slug: str, body: ReviewBody
                ) -> tuple[dict[str, Any], bool]:
    """Create the buyer's review of the listing or edit it; (its JSON, created)."""
    listing = _listed(db, slug, lock=True)
    if not is_verified_buyer(db, buyer.id, listing.id):
        raise Forbidden("only verified buyers review a model: make at least one paid call "
                        "or buy an export licence of it first", code="not_a_verified_buyer")
    review = _own(db, listing.id, buyer.id)
    created = review is None
    now = utcnow()
    if review is None:
        review = ListingReview(listing_id=listing.id, buyer_id=buyer.id, stars=body.stars,
                               text=body.text, created_at=now, updated_at=now)
        db.add(review)
    else:
        review.stars, review.text, review.updated_at = body.stars, body.text, now
    try:
        db.flush()
    except IntegrityError:  # the same buyer's two first reviews at once: edit the winner
        db.rollback()
        return post_review(db, buyer, slug, body)
    refresh_rating(db, listing.id)
    db.commit()
    return review_json(review, buyer.handle or buyer.name), created


def _own(db: Session, listing_id: int, buyer_id: int) -> ListingReview | None:
    return db.execute(select(ListingReview).where(
        ListingReview.listing_id == listing_id, ListingReview.buyer_id == buyer_id)
    ).scalar_one_or_none()


def list_reviews(db: Session, slug: str, page: int = 1, page_size: int = PAGE_SIZE
                 ) -> dict[str, Any]:
    """A listing's visible reviews, newest first, with its rating."""
    listing = _listed(db, slug)
    author = aliased(Account)
    rows = db.execute(
        select(ListingReview, func.coalesce(author.handle, author.name))
        .join(author, author.id == ListingReview.buyer_id)
        .where(ListingReview.listing_id == listing.id, ListingReview.hidden == false())
        .order_by(ListingReview.id.desc()).offset((page - 1) * page_size).limit(page_size)
    ).all()
    return {"slug": slug, "rating": rating_json(listing), "page": page,
            "items": [review_json(r, name) for r, name in rows]}


def _review_of(db: Session, review_id: int, slug: str | None = None
               ) -> tuple[ListingReview, Listing]:
    row = db.execute(select(ListingReview, Listing)
                     .join(Listing, Listing.id == ListingReview.listing_id)
                     .where(ListingReview.id == review_id)).first()
    if row is None or (slug is not None and row[1].slug != slug):
        raise NotFound(f"no review {review_id}" + (f" of '{slug}'" if slug else ""),
                       code="review_not_found")
    return row[0], row[1]


def reply(db: Session, seller: Account, slug: str, review_id: int, body: ReplyBody
          ) -> dict[str, Any]:
    """The listing's seller answers a review, once."""
    review, listing = _review_of(db, review_id, slug)
    if listing.seller_id != seller.id:
        raise Forbidden("only the listing's seller replies to its reviews", code="not_owner")
    if review.hidden:
        raise NotFound(f"no review {review_id} of '{slug}'", code="review_not_found")
    if review.reply is not None:
        raise Conflict("this review has a reply already (one per review)",
                       code="already_replied")
    review.reply, review.replied_at = body.text, utcnow()
    db.commit()
    author = db.get(Account, review.buyer_id)
    return review_json(review, author.handle or author.name if author else None)


def hide(db: Session, admin: Account, review_id: int, body: HideBody) -> dict[str, Any]:
    """Hide a review from everyone (kept, and the decision kept in the audit log)."""
    review, listing = _review_of(db, review_id)
    if not review.hidden:
        review.hidden = True
        version_id = listing.live_version_id or db.execute(
            select(func.max(ListingVersion.id)).where(ListingVersion.listing_id == listing.id)
        ).scalar_one()
        db.add(Review(listing_version_id=version_id, admin_id=admin.id,
                      decision="hide_review",
                      reason=f"review {review.id}: {body.reason}".strip()[:2000]))
        refresh_rating(db, listing.id)
        db.commit()
    return {"id": review.id, "slug": listing.slug, "hidden": True}


def page_reviews(db: Session, slug: str, viewer: Account | None) -> dict[str, Any]:
    """What the model page shows: the reviews, the viewer's own, whether they may review."""
    shown = list_reviews(db, slug)
    listing = _listed(db, slug)
    mine = None if viewer is None else _own(db, listing.id, viewer.id)
    return {
        **shown,
        "mine": None if mine is None or mine.hidden else review_json(mine, None),
        "can_review": viewer is not None and is_verified_buyer(db, viewer.id, listing.id),
        "is_seller": viewer is not None and viewer.id == listing.seller_id,
    }
