"""Edge delivery: calibration inputs for int8 exports, tracing a leaked model to its licence,
and the export compatibility table of a listing."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from export import calibration
from serving import BadRequest, Forbidden, InvalidInput, Manifest, PayloadTooLarge

from .. import compare, edge, edge_usage
from ..deps import CurrentAccount, Seller, ServicesDep, SessionDep
from ..purchases import live_listing as _listing
from ..throttle import request_address
from ..tryit import Visitor
from ..web.session import account_id

router = APIRouter(tags=["exports"])
MAX_CALIBRATION_MB = 64
MAX_COMPARE_MB = 32  # as the paid call's bodies


async def _body(request: Request, limit_mb: int, part: str) -> bytes:
    """The request's file: a raw body, or the multipart part ``part``."""
    limit = limit_mb * 1024 * 1024
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise BadRequest("send the file with a Content-Length header", code="length_required")
    if int(length) > limit + 1_000_000:
        raise PayloadTooLarge(f"files are limited to {limit_mb} MB")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4, max_part_size=64 * 1024)
        try:
            upload = form.get(part)
            if upload is None or isinstance(upload, str):
                raise InvalidInput(f"part '{part}' (a file) is missing", code="missing_file")
            data = await upload.read(limit + 1)
        finally:
            await form.close()
    else:
        data = await request.body()
    if len(data) > limit:
        raise PayloadTooLarge(f"files are limited to {limit_mb} MB")
    if not data:
        raise InvalidInput("the request carries no file", code="missing_file")
    return data


@router.post("/v1/models/{slug}/calibration", status_code=201)
async def upload_calibration(slug: str, request: Request, seller: Seller,
                             svc: ServicesDep) -> dict[str, Any]:
    """Calibration inputs for int8 exports of your listing: an ``.npz`` of the model's inputs
    (raw body or multipart part ``file``), or JSON ``{"bodies": [...]}`` holding request bodies
    of the task. They replace earlier uploads."""
    with svc.sessions() as db:
        listing, lv = await run_in_threadpool(_listing, db, slug)
        if seller.role != "admin" and listing.seller_id != seller.id:
            raise Forbidden(f"only the seller of '{slug}' uploads its calibration inputs",
                            code="not_your_listing")
        manifest = Manifest.model_validate_json(lv.manifest_json)
        is_json = request.headers.get("content-type", "").startswith("application/json")
        data = await _body(request, MAX_CALIBRATION_MB, "file")
        if is_json:
            try:
                doc = json.loads(data)
            except ValueError as exc:
                raise InvalidInput("the body is not JSON", code="invalid_json") from exc
            bodies = doc.get("bodies") if isinstance(doc, dict) else None
            items = await run_in_threadpool(calibration.from_bodies, manifest, bodies)
        else:
            items = await run_in_threadpool(calibration.from_npz, manifest, data)
        kept = await run_in_threadpool(edge.save_calibration, svc.settings.data_dir,
                                       listing.id, items)
        edge.forget_compatibility(svc.settings.data_dir, lv)
    return {"slug": slug, "inputs": kept,
            "used_for": "int8 exports (jetson-orin, precision int8), with the listing's "
                        "example inputs"}


@router.post("/v1/trace")
async def trace(request: Request, account: CurrentAccount, svc: ServicesDep,
                db: SessionDep) -> dict[str, Any]:
    """Recover the licence from a model file's watermark (raw body or multipart part
    ``model``): for an admin, or the seller of the matched listing."""
    if account.role not in ("admin", "seller"):
        raise Forbidden("tracing a model is for sellers and admins", code="wrong_role")
    data = await _body(request, svc.settings.max_upload_mb, "model")
    key = edge.watermark_key(svc.signer)
    return await run_in_threadpool(edge.trace, db, svc.settings.data_dir, key, data, account)


@router.get("/v1/models/{slug}/export-compatibility")
async def export_compatibility(slug: str, svc: ServicesDep) -> dict[str, Any]:
    """For each export target: exportable or not (operators, opset), the precisions, and the
    agreement with the hosted model measured on sample inputs."""
    with svc.sessions() as db:
        listing, lv = await run_in_threadpool(_listing, db, slug)
        rows = await run_in_threadpool(edge.compatibility, svc.settings.data_dir, lv,
                                       listing.id)
        return {"slug": slug, "version": lv.version, "targets": rows}


@router.post("/v1/models/{slug}/compare")
async def compare_with_export(slug: str, request: Request, svc: ServicesDep) -> dict[str, Any]:
    """"Compare with the export": JSON ``{"target", "precision"?, "input": <the task's request
    body>}``. Runs the target's export (fp16 / int8 on onnxruntime) beside the hosted model
    on the input and answers ``hosted``, ``export`` and their ``difference``; metered as one
    demo call (signed-in buyers' free trial calls first, then the daily demo quota)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise InvalidInput("send JSON: {\"target\", \"precision\", \"input\"}",
                           code="invalid_json")
    raw = await request.body()
    if len(raw) > MAX_COMPARE_MB * 1024 * 1024:
        raise PayloadTooLarge(f"bodies are limited to {MAX_COMPARE_MB} MB")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput("the body is not JSON", code="invalid_json") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("input"), dict):
        raise InvalidInput("give 'input': the request body the model's /predict takes, and "
                           "'target' (and 'precision')", code="invalid_input")
    visitor = Visitor(await run_in_threadpool(account_id, request, svc),
                      request_address(request, svc))
    return await compare.compare_call(svc, slug, doc.get("target"), doc.get("precision"),
                                      doc["input"], visitor)


@router.post("/v1/edge-usage")
async def edge_usage_receipts(request: Request, svc: ServicesDep) -> dict[str, Any]:
    """A kit's usage receipts (``{"license_id", "receipts": [...]}``, what ``aimarket kit
    sync`` sends): verified against the export's chain and charged to its buyer once (ledger
    kind ``edge``). No login: each receipt carries the export's own Ed25519 signature. A
    forged receipt is 422 ``receipt_forged``; a replayed, reordered or gapped one 409
    (``receipt_replayed``, ``receipt_out_of_order``, ``receipt_gap``); no credit 402."""
    raw = await request.body()
    if len(raw) > MAX_COMPARE_MB * 1024 * 1024:
        raise PayloadTooLarge(f"bodies are limited to {MAX_COMPARE_MB} MB")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput("the body is not JSON", code="invalid_json") from exc
    return await edge_usage.submit(svc, doc)


@router.get("/v1/edge-usage/{license_id}")
async def edge_usage_chain(license_id: str, account: CurrentAccount,
                           svc: ServicesDep) -> dict[str, Any]:
    """How far an export's receipt chain got (its buyer, the listing's seller, an admin)."""
    return await run_in_threadpool(edge_usage.chain, svc, license_id, account)
