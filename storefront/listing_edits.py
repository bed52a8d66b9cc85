"""A seller changes a listing: its description, prices (per call, export, kit) and trial
calls, its serving options, or takes it off the catalog and back. For the API and the seller's
pages alike.

A price applies to the listing's live versions; each gateway process reads it within its
registry's TTL (seconds), and the ledger keeps the price each call was charged."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from metering import format_usd, to_micro
from serving import Conflict, Forbidden, InvalidInput, Manifest, NotFound, ServingOptions, model_key
from serving.manifest import Pricing

from .deployments import live_versions, serving_options, set_serving_options
from .models import Account, Listing
from .registry import to_live

if TYPE_CHECKING:
    from .services import Services

USD = Field(None, max_length=32, description='USD decimal string, e.g. "0.002"')


class ListingChange(BaseModel):
    """What to change; an absent field stays. ``export_price`` / ``kit_price`` null: no
    longer offered."""

    description: str | None = Field(None, max_length=5000)
    per_call: str | None = USD
    trial_calls: int | None = Field(None, ge=0, le=1_000_000)
    export_price: str | None = USD
    kit_price: str | None = USD


class ServingChange(BaseModel):
    """Fields left out keep their value."""

    min_replicas: int | None = Field(None, ge=0, le=64)
    max_replicas: int | None = Field(None, ge=1, le=64)
    target_ongoing_requests: float | None = Field(None, gt=0, le=10_000)
    max_ongoing_requests: int | None = Field(None, ge=1, le=10_000)
    max_batch_size: int | None = Field(None, ge=1, le=1024,
                                       description="1 turns dynamic batching off")
    batch_wait_ms: float | None = Field(None, ge=0, le=1000)
    batching: Literal["auto", "off"] | None = Field(
        None, description="auto: the local backend batches models slow enough to gain from "
        "it (review latency >= 0.5 ms) up to 8 rows; off: the local backend does not batch "
        "this listing (max_batch_size still sets Ray's batching)")
    backend: Literal["local", "ray", "triton"] | None = Field(
        None, description="The engine among the enabled ones (AIMARKET_SERVING_BACKENDS)")

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _something(self) -> ServingChange:
        if not self.model_dump(exclude_none=True):
            raise ValueError("send at least one option to change")
        return self


def own_listing(db: Session, account: Account, slug: str) -> Listing:
    listing = db.execute(select(Listing).where(Listing.slug == slug)).scalar_one_or_none()
    if listing is None:
        raise NotFound(f"no listing '{slug}'", code="model_not_found")
    if listing.seller_id != account.id and account.role != "admin":
        raise Forbidden(f"listing '{slug}' belongs to another seller", code="not_owner")
    return listing


def listing_settings(db: Session, listing: Listing) -> dict[str, Any]:
    """The editable values (the newest live version's prices), as the form shows them."""
    lives = live_versions(db, listing)
    pricing = Manifest.model_validate_json(lives[-1].manifest_json).pricing if lives else None
    return {
        "slug": listing.slug, "title": listing.title, "status": listing.status,
        "description": listing.description,
        "per_call": format_usd(lives[-1].price) if lives else None,
        "trial_calls": lives[-1].trial_calls if lives else None,
        "export_price": (format_usd(lives[-1].export_price)
                         if lives and lives[-1].export_price is not None else None),
        "kit_price": (format_usd(to_micro(pricing.kit_price))
                      if pricing and pricing.kit_price is not None else None),
        "live_versions": [v.version for v in lives],
    }


def edit(svc: Services, db: Session, account: Account, slug: str, change: ListingChange
         ) -> dict[str, Any]:
    listing = own_listing(db, account, slug)
    sent = change.model_fields_set
    if "description" in sent and change.description is not None:
        listing.description = change.description
    prices = {k for k in ("per_call", "trial_calls", "export_price", "kit_price") if k in sent}
    if prices:
        lives = live_versions(db, listing)
        if not lives:
            raise Conflict(f"'{slug}' has no live version to price yet", code="nothing_live")
        for lv in lives:
            manifest = Manifest.model_validate_json(lv.manifest_json)
            values = manifest.pricing.model_dump()
            values.update({k: getattr(change, k) for k in prices})
            if values["per_call"] is None or values["trial_calls"] is None:
                raise Conflict("per_call and trial_calls cannot be removed",
                               code="price_required")
            try:  # the manifest's own money rules
                pricing = Pricing.model_validate(values)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                     for e in exc.errors())
                raise InvalidInput(f"invalid price: {problems}", code="invalid_amount") from exc
            lv.manifest_json = manifest.model_copy(update={"pricing": pricing}
                                                   ).model_dump_json()
            lv.price, lv.trial_calls = to_micro(pricing.per_call), pricing.trial_calls
            lv.export_price = (None if pricing.export_price is None
                               else to_micro(pricing.export_price))
    db.commit()
    svc.registry.invalidate(slug)
    return listing_settings(db, listing)


async def delist(svc: Services, account: Account, slug: str) -> dict[str, Any]:
    """Take a listing off the catalog (its calls answer 404) and undeploy every version."""
    with svc.sessions() as db:
        listing = own_listing(db, account, slug)
        listing.status = "delisted"
        keys = [model_key(slug, lv.version) for lv in live_versions(db, listing)]
        db.commit()
    svc.registry.invalidate(slug)
    for key in keys:
        await svc.backend.undeploy(key)
    return {"slug": slug, "status": "delisted", "undeployed": keys}


def relist(svc: Services, db: Session, account: Account, slug: str) -> dict[str, Any]:
    """List a delisted listing again (it needs a live version); its versions deploy on their
    first call."""
    listing = own_listing(db, account, slug)
    if not live_versions(db, listing):
        raise Conflict(f"'{slug}' has no live version: it is listed when a moderator "
                       "approves one", code="nothing_live")
    listing.status = "listed"
    db.commit()
    svc.registry.invalidate(slug)
    return listing_settings(db, listing)


async def change_serving(svc: Services, account: Account, slug: str, changes: dict[str, Any]
                         ) -> ServingOptions:
    """Change a listing's serving options (replicas, batching, backend; fields absent keep
    their value) and apply them at once to every live version of a listed listing."""
    with svc.sessions() as db:
        listing = own_listing(db, account, slug)
        options = replace(serving_options(db, listing.id), **changes)
        enabled = svc.settings.enabled_backends()
        if options.backend and options.backend not in enabled:
            raise InvalidInput(f"backend {options.backend!r} is not enabled on this server "
                               f"(enabled: {', '.join(enabled)})",
                               code="invalid_serving_options")
        if options.max_replicas < max(options.min_replicas, 1):
            raise InvalidInput("max_replicas must be at least min_replicas (and 1)",
                               code="invalid_serving_options")
        set_serving_options(db, listing, options, account.id)
        if listing.status == "listed":
            for lv in live_versions(db, listing):
                await svc.backend.deploy(to_live(listing, lv, svc.settings.data_dir,
                                                 options).ref)
    svc.registry.invalidate(slug)
    return options
