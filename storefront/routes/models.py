"""Sellers upload models; everyone browses the catalog."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving import BadRequest, InvalidInput, PayloadTooLarge

from .. import catalog, publishing
from ..deps import Seller, ServicesDep, SessionDep
from ..models import Account

router = APIRouter(tags=["models"])


@router.post("/v1/models", status_code=201)
async def upload_model(request: Request, seller: Seller, svc: ServicesDep) -> dict[str, Any]:
    """Multipart: ``model`` (an .onnx file, or a zip/tar holding one with its external data and
    manifest), ``manifest`` (file or text), ``license``, ``attest_rights=true``, optional
    ``slug`` (a new version of your listing)."""
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
        model, manifest_part = form.get("model"), form.get("manifest")
        if not isinstance(model, UploadFile):
            raise InvalidInput("part 'model' (the .onnx file) is missing", code="missing_model")
        manifest_text = (
            await manifest_part.read() if isinstance(manifest_part, UploadFile) else manifest_part
        )
        data = await model.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"models are limited to {svc.settings.max_upload_mb} MB")
        fields = {k: form.get(k) for k in ("slug", "license", "attest_rights")}
    finally:
        await form.close()
    if any(v is not None and not isinstance(v, str) for v in fields.values()):
        raise InvalidInput("'slug', 'license' and 'attest_rights' are text fields",
                           code="invalid_field")
    submission = publishing.Submission(
        upload=data, manifest_text=manifest_text, license=fields["license"],  # type: ignore[arg-type]
        attested=str(fields["attest_rights"]).lower() in ("true", "1", "yes", "on"),
        slug=fields["slug"] or None,  # type: ignore[arg-type]
    )
    published = await run_in_threadpool(_publish, svc, seller, submission)
    return {"slug": published.slug, "version": published.version, "status": published.status,
            "latency_ms": round(published.latency_us / 1000, 3), "sha256": published.sha256,
            "findings": published.findings}


def _publish(svc: Any, seller: Account, sub: publishing.Submission) -> publishing.Published:
    with svc.sessions() as db:
        return publishing.publish(db, svc.settings, seller, sub)


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
    return catalog.catalog(db, q=q, category=category, task=task, sort=sort, page=page,
                           page_size=page_size)


@router.get("/v1/models/{slug}")
def get_model(slug: str, db: SessionDep) -> dict[str, Any]:
    return catalog.detail(db, slug)


@router.get("/v1/seller/models")
def my_models(seller: Seller, db: SessionDep) -> dict[str, Any]:
    return {"items": catalog.seller_listings(db, seller)}
