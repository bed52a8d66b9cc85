"""Sellers upload models; everyone browses the catalog."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving import BadRequest, InvalidInput, PayloadTooLarge, parse_manifest

from .. import listings
from ..deps import Seller, ServicesDep, SessionDep
from ..models import Account

router = APIRouter(tags=["models"])


@router.post("/v1/models", status_code=201)
async def upload_model(request: Request, seller: Seller, svc: ServicesDep) -> dict[str, Any]:
    """Multipart: ``model`` (the .onnx file), ``manifest`` (file or text), optional ``slug``."""
    limit = svc.settings.max_upload_mb * 1024 * 1024
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise BadRequest("send the upload with a Content-Length header", code="length_required")
    if int(length) > limit + 1_000_000:
        raise PayloadTooLarge(f"uploads are limited to {svc.settings.max_upload_mb} MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("send multipart/form-data with parts 'model' and 'manifest'",
                         code="multipart_required")
    form = await request.form(max_files=2, max_fields=8, max_part_size=512 * 1024)
    try:
        model, manifest_part, slug = form.get("model"), form.get("manifest"), form.get("slug")
        if not isinstance(model, UploadFile):
            raise InvalidInput("part 'model' (the .onnx file) is missing", code="missing_model")
        if manifest_part is None:
            raise InvalidInput("part 'manifest' (YAML or JSON) is missing", code="missing_manifest")
        manifest_text = (
            await manifest_part.read() if isinstance(manifest_part, UploadFile) else manifest_part
        )
        manifest = parse_manifest(manifest_text)
        data = await model.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"models are limited to {svc.settings.max_upload_mb} MB")
    finally:
        await form.close()
    if slug is not None and not isinstance(slug, str):
        raise InvalidInput("'slug' is a text field", code="invalid_slug")
    published = await run_in_threadpool(_publish, svc, seller, data, manifest, slug or None)
    return {"slug": published.slug, "version": published.version, "status": published.status,
            "latency_ms": round(published.latency_us / 1000, 3), "sha256": published.sha256}


def _publish(svc: Any, seller: Account, data: bytes, manifest: Any,
             slug: str | None) -> listings.Published:
    with svc.sessions() as db:
        return listings.publish(db, svc.settings.data_dir, seller, data, manifest, slug)


@router.get("/v1/models")
def list_models(
    db: SessionDep,
    q: Annotated[str | None, Query(max_length=100)] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    task: Annotated[str | None, Query(max_length=40)] = None,
    sort: Literal["newest", "popular", "price", "latency", "title"] = "newest",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    return listings.catalog(db, q=q, category=category, task=task, sort=sort, page=page,
                            page_size=page_size)


@router.get("/v1/models/{slug}")
def get_model(slug: str, db: SessionDep) -> dict[str, Any]:
    return listings.detail(db, slug)


@router.get("/v1/seller/models")
def my_models(seller: Seller, db: SessionDep) -> dict[str, Any]:
    return {"items": listings.seller_listings(db, seller)}
