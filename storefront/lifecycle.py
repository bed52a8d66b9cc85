"""Deprecating a version: a sunset date, the headers a pinned call gets until then
(``Deprecation``, RFC 9745; ``Sunset``, RFC 8594), and 410 ``version_sunset`` after it.

The headers are computed once per version when the registry loads it (``LiveVersion``), so a
paid call only compares one number with the clock."""

from __future__ import annotations

from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from serving import AimarketError, Conflict, Forbidden, NotFound

from .models import Account, Listing, ListingVersion

Headers = tuple[tuple[bytes, bytes], ...]


class VersionSunset(AimarketError):
    """The version's sunset has passed: it answers no more calls (and charges none)."""

    status, code = 410, "version_sunset"


def parse_when(text: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (UTC when it names no offset)."""
    text = text.strip()
    try:
        parsed = (datetime.combine(date.fromisoformat(text), datetime.min.time())
                  if len(text) == 10 else datetime.fromisoformat(text))
    except ValueError as exc:
        raise ValueError("an ISO date (2027-01-31) or datetime (2027-01-31T12:00:00Z)") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they are UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Deprecation(BaseModel):
    sunset: str = Field(max_length=40, description="ISO date or datetime; after it the "
                        "version answers 410 version_sunset (a past one retires it now)")

    @field_validator("sunset")
    @classmethod
    def _when(cls, value: str) -> str:
        return parse_when(value).isoformat()


def headers(slug: str, deprecated_at: datetime | None, sunset_at: datetime | None) -> Headers:
    """The response headers of a call to a deprecated version (none for a current one)."""
    deprecated, sunset = as_utc(deprecated_at), as_utc(sunset_at)
    if deprecated is None:
        return ()
    out = [(b"deprecation", f"@{int(deprecated.timestamp())}".encode()),
           (b"link", f'</models/{slug}>; rel="deprecation"; type="text/html"'.encode())]
    if sunset is not None:
        out.append((b"sunset", format_datetime(sunset, usegmt=True).encode()))
    return tuple(out)


def sunset_error(slug: str, version: int, sunset_at: datetime | None) -> VersionSunset:
    when = as_utc(sunset_at)
    return VersionSunset(
        f"{slug} version {version} reached its sunset"
        + (f" on {when.isoformat()}" if when else "")
        + f" and answers no more calls; call /v2/models/{slug}/infer (the current version)",
        details={"slug": slug, "version": version,
                 "sunset": when.isoformat() if when else None})


def deprecate(db: Session, account: Account, slug: str, version: int, body: Deprecation
              ) -> dict[str, Any]:
    """Mark a live version deprecated with its sunset (the listing's seller or an admin)."""
    row = db.execute(select(Listing, ListingVersion)
                     .join(ListingVersion, ListingVersion.listing_id == Listing.id)
                     .where(Listing.slug == slug, ListingVersion.version == version)).first()
    if row is None:
        raise NotFound(f"'{slug}' has no version {version}", code="version_not_found")
    listing, lv = row
    if listing.seller_id != account.id and account.role != "admin":
        raise Forbidden(f"listing '{slug}' belongs to another seller", code="not_owner")
    if lv.status != "live":
        raise Conflict(f"'{slug}' version {version} is {lv.status}, not live",
                       code="version_not_live")
    lv.deprecated_at = lv.deprecated_at or datetime.now(UTC)
    lv.sunset_at = datetime.fromisoformat(body.sunset)
    db.commit()
    return version_state(slug, lv)


def version_state(slug: str, lv: ListingVersion) -> dict[str, Any]:
    deprecated, sunset = as_utc(lv.deprecated_at), as_utc(lv.sunset_at)
    return {"slug": slug, "version": lv.version, "deprecated": deprecated is not None,
            "deprecated_at": deprecated.isoformat() if deprecated else None,
            "sunset": sunset.isoformat() if sunset else None,
            "sunset_passed": sunset is not None and sunset <= datetime.now(UTC)}
