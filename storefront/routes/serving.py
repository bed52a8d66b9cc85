"""A listing's serving: its options (replicas, autoscaling, batching) and delisting.

The listing's seller or an admin may change either. Changed options are applied at once to
every live version (Serve updates autoscaling and batching in place); delisting undeploys
every version, and paid calls answer 404 from then on.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from serving import ServingOptions, model_key

from .. import listing_edits, preload
from ..deployments import live_versions, serving_options
from ..deps import Seller, ServicesDep, SessionDep

router = APIRouter(tags=["serving"])


@router.get("/v1/models/{slug}/serving")
def get_serving(slug: str, account: Seller, svc: ServicesDep) -> dict[str, Any]:
    with svc.sessions() as db:
        listing = listing_edits.own_listing(db, account, slug)
        versions = live_versions(db, listing)
        return _view(slug, serving_options(db, listing.id), svc,
                     versions[-1].version if versions else None)


@router.patch("/v1/models/{slug}/serving")
async def patch_serving(slug: str, body: listing_edits.ServingChange, account: Seller,
                        svc: ServicesDep) -> dict[str, Any]:
    options = await listing_edits.change_serving(svc, account, slug,
                                                 body.model_dump(exclude_none=True))
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
