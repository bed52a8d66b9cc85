"""Sellers upload models; everyone browses the catalog."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from .. import catalog, lifecycle, listing_edits, listing_openapi, publishing
from ..deps import Id, Seller, ServicesDep, SessionDep

router = APIRouter(tags=["models"])


@router.post("/v1/models", status_code=201)
async def upload_model(request: Request, seller: Seller, svc: ServicesDep) -> dict[str, Any]:
    """Multipart: ``model`` (an .onnx file, or a zip/tar holding one with its external data and
    manifest), ``manifest`` (file or text), ``license``, ``attest_rights=true`` (or ``1``,
    ``yes``, ``on``), optional ``slug`` (a new version of your listing)."""
    submission = await publishing.read_upload(request, svc.settings.max_upload_mb)
    published = await run_in_threadpool(publishing.publish_upload, svc, seller, submission)
    return {"slug": published.slug, "version": published.version, "status": published.status,
            "latency_ms": round(published.latency_us / 1000, 3), "sha256": published.sha256,
            "findings": published.findings}


@router.get("/v1/models")
def list_models(
    db: SessionDep,
    q: Annotated[str | None, Query(max_length=100)] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    task: Annotated[str | None, Query(max_length=40)] = None,
    sort: Literal["newest", "popular", "price", "latency", "title", "rating"] = "newest",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    return catalog.catalog(db, q=q, category=category, task=task, sort=sort, page=page,
                           page_size=page_size)


@router.get("/v1/models/{slug}")
def get_model(slug: str, db: SessionDep) -> dict[str, Any]:
    return catalog.detail(db, slug)


@router.get("/v1/models/{slug}/openapi.json")
def model_openapi(slug: str, db: SessionDep, request: Request) -> dict[str, Any]:
    """This model's own OpenAPI 3.1 document, generated from its manifest: the task-level
    /predict request and response, the v2 routes, auth, errors and metering headers."""
    info = catalog.detail(db, slug)
    manifest = catalog.manifest_of(db, slug, info["version"])
    base = str(request.base_url).rstrip("/")
    return listing_openapi.document(base, slug, info["version"], manifest)


@router.get("/v1/seller/models")
def my_models(seller: Seller, db: SessionDep) -> dict[str, Any]:
    return {"items": catalog.seller_listings(db, seller)}


@router.post("/v1/models/{slug}/versions/{version}/deprecate")
def deprecate(slug: str, version: Id, body: lifecycle.Deprecation, seller: Seller,
              svc: ServicesDep, db: SessionDep) -> dict[str, Any]:
    """Deprecate a live version with a ``sunset`` (ISO date or datetime): pinned calls get
    ``Deprecation`` and ``Sunset`` headers until then and 410 ``version_sunset`` after,
    never charged; unpinned calls go to a newer live version. Sending again moves the
    sunset."""
    state = lifecycle.deprecate(db, seller, slug, version, body)
    svc.registry.invalidate(slug)  # other processes: within the registry's TTL
    return state


@router.patch("/v1/models/{slug}")
def edit_listing(slug: str, body: listing_edits.ListingChange, seller: Seller,
                 svc: ServicesDep, db: SessionDep) -> dict[str, Any]:
    """Change the description, the price per call, trial calls, export or kit price (null:
    not offered) of your listing; prices apply to its live versions, on every gateway
    process within seconds (the ledger keeps each call's price)."""
    return listing_edits.edit(svc, db, seller, slug, body)
