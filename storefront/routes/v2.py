"""The Open Inference Protocol v2 routes beside the paid call, so tritonclient works.

Server liveness, readiness and metadata are public (like ``/healthz``); model metadata and
readiness need the same API key as a paid call (``Authorization: Bearer <key>``) and cost
nothing. ``/v2/models/{slug}/infer`` itself lives in ``storefront.gateway``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving import ServiceUnavailable, v2_model_metadata

from .. import VERSION
from ..deps import Id, ServicesDep
from ..registry import LiveVersion
from ..services import redis_ping

router = APIRouter(tags=["inference"])


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(svc: ServicesDep) -> dict[str, bool]:
    try:
        await redis_ping(svc.redis)
    except Exception as exc:
        raise ServiceUnavailable("metering is unavailable", code="metering_unavailable") from exc
    return {"ready": True}


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "aimarket", "version": VERSION, "extensions": ["binary_tensor_data"]}


async def _model(request: Request, svc: ServicesDep, slug: str,
                 version: int | None) -> LiveVersion:
    await svc.keys.authenticate(request.headers.get("authorization"))
    return await svc.registry.get(slug, version)


@router.get("/v2/models/{slug}")
async def model_metadata(slug: str, request: Request, svc: ServicesDep) -> dict[str, Any]:
    live = await _model(request, svc, slug, None)
    return v2_model_metadata(slug, [str(live.version)], live.manifest)


@router.get("/v2/models/{slug}/versions/{version}")
async def version_metadata(slug: str, version: Id, request: Request,
                           svc: ServicesDep) -> dict[str, Any]:
    live = await _model(request, svc, slug, version)
    return v2_model_metadata(slug, [str(live.version)], live.manifest)


@router.get("/v2/models/{slug}/ready")
async def model_ready(slug: str, request: Request, svc: ServicesDep) -> Response:
    live = await _model(request, svc, slug, None)
    return _ready(svc, live)


@router.get("/v2/models/{slug}/versions/{version}/ready")
async def version_ready(slug: str, version: Id, request: Request,
                        svc: ServicesDep) -> Response:
    live = await _model(request, svc, slug, version)
    return _ready(svc, live)


def _ready(svc: ServicesDep, live: LiveVersion) -> Response:
    if not svc.backend.is_deployed(live.ref.key):
        raise ServiceUnavailable(f"{live.ref.key} is not deployed", code="model_not_ready")
    return Response(status_code=200)
