"""How each listing is served (replicas, batching) and the deploy / undeploy decisions."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from metering import Base, utcnow
from serving import ServingOptions

from .models import Listing, ListingVersion


class ListingServing(Base):
    """A listing's serving options, set by its seller or an admin; absent means defaults."""

    __tablename__ = "listing_serving"
    listing_id: Mapped[int] = mapped_column(ForeignKey("listings.id"), primary_key=True)
    options: Mapped[str] = mapped_column(Text, default="{}")  # JSON of ServingOptions fields
    updated_by: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


_FIELDS = {f.name for f in fields(ServingOptions)}


def serving_options(db: Session, listing_id: int) -> ServingOptions:
    """The listing's serving options (defaults where unset)."""
    row = db.get(ListingServing, listing_id)
    stored = json.loads(row.options) if row is not None else {}
    return ServingOptions(**{k: v for k, v in stored.items() if k in _FIELDS})


def set_serving_options(db: Session, listing: Listing, options: ServingOptions,
                        by: int) -> None:
    row = db.get(ListingServing, listing.id)
    if row is None:
        row = ListingServing(listing_id=listing.id, updated_by=by)
        db.add(row)
    row.options, row.updated_by, row.updated_at = json.dumps(asdict(options)), by, utcnow()
    db.commit()


def live_versions(db: Session, listing: Listing) -> list[ListingVersion]:
    return list(db.execute(
        select(ListingVersion).where(ListingVersion.listing_id == listing.id,
                                     ListingVersion.status == "live")
        .order_by(ListingVersion.version)
    ).scalars())
