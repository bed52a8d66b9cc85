"""A seller's public page: their listed models, calls served, average rating, member since."""

from __future__ import annotations

from typing import Any

from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from metering import ListingCounter
from serving import NotFound

from . import catalog
from .models import Account, Listing, ListingReview


def profile(db: Session, handle: str) -> dict[str, Any]:
    """What ``/sellers/{handle}`` shows; 404 ``seller_not_found`` for no such seller."""
    seller = db.execute(select(Account).where(Account.handle == handle.lower(),
                                              Account.role.in_(("seller", "admin")))
                        ).scalar_one_or_none()
    if seller is None:
        raise NotFound(f"no seller '{handle}'", code="seller_not_found")
    listed = (Listing.seller_id == seller.id, Listing.status == "listed",
              Listing.live_version_id.is_not(None))
    ids = list(db.execute(select(Listing.id).where(*listed)
                          .order_by(Listing.title, Listing.id)).scalars())
    calls = db.execute(
        select(func.coalesce(func.sum(ListingCounter.calls_served), 0))
        .join(Listing, Listing.id == ListingCounter.listing_id).where(*listed)).scalar_one()
    # over every visible review of the seller's listed models (not an average of averages)
    n, total = db.execute(
        select(func.count(), func.coalesce(func.sum(ListingReview.stars), 0))
        .join(Listing, Listing.id == ListingReview.listing_id)
        .where(*listed, ListingReview.hidden == false())).one()
    return {
        "handle": seller.handle,
        "member_since": seller.created_at.isoformat(),
        "calls_served": int(calls),
        "rating": {"average": round(int(total) / int(n), 2) if n else None, "count": int(n)},
        "listings": [catalog.card(*row) for row in catalog.cards(db, ids)],
    }
