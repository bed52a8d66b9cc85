"""A listing's serving: its options (replicas, autoscaling, batching) and delisting.

The listing's seller or an admin may change either. Changed options are applied at once to
every live version (Serve updates autoscaling and batching in place); delisting undeploys
every version, and paid calls answer 404 from then on.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from serving import InvalidInput, ServingOptions, model_key

from .. import listing_edits, preload
from ..deployments import live_versions, serving_options, set_serving_options
from ..deps import Seller, ServicesDep, SessionDep
from ..registry import to_live

router = APIRouter(tags=["serving"])


class ServingPatch(BaseModel):
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
    def _something(self) -> ServingPatch:
        if not self.model_dump(exclude_none=True):
            raise ValueError("send at least one option to change")
        return self





@router.get("/v1/models/{slug}/serving")
def get_serving(slug: str, account: Seller, svc: ServicesDep) -> dict[str, Any]:
    with svc.sessions() as db:
        listing = listing_edits.own_listing(db, account, slug)
        versions = live_versions(db, listing)
        return _view(slug, serving_options(db, listing.id), svc,
                     versions[-1].version if versions else None)


@router.patch("/v1/models/{slug}/serving")
async def patch_serving(slug: str, body: ServingPatch, account: Seller,
                        svc: ServicesDep) -> dict[str, Any]:
    with svc.sessions() as db:
        listing = listing_edits.own_listing(db, account, slug)
        options = replace(serving_options(db, listing.id), **body.model_dump(exclude_none=True))
        if options.backend and options.backend not in svc.settings.enabled_backends():
            raise InvalidInput(f"backend {options.backend!r} is not enabled on this server "
                               f"(enabled: {', '.join(svc.settings.enabled_backends())})",
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
    return _view(slug, options, svc)


def _view(slug: str, options: ServingOptions, svc: Any, version: int | None = None
          ) -> dict[str, Any]:
    view = {"slug": slug, **asdict(options), "backend": options.backend or svc.backend.name}
    if version is not None:  # how the newest live version's calls were batched here
        key = model_key(slug, version)
        view["local_batching"] = preload.batching_view(svc.backend, key)
        running = preload.replicas_running(svc.backend, key)
        if running is not None:  # on Ray: 0 while scaled to zero for idleness
            view["replicas_running"] = running
    return view


@router.post("/v1/models/{slug}/delist")
async def delist(slug: str, account: Seller, svc: ServicesDep) -> dict[str, Any]:
    """Take a listing off the catalog and undeploy every version of it."""
    return await listing_edits.delist(svc, account, slug)


@router.post("/v1/models/{slug}/relist")
def relist(slug: str, account: Seller, svc: ServicesDep, db: SessionDep) -> dict[str, Any]:
    """List a delisted listing again (it needs a live version)."""
    return listing_edits.relist(svc, db, account, slug)
