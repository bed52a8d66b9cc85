"""The paid call, top to bottom: authenticate, reserve, infer, commit or release, respond.

POST /v2/models/{slug}/infer                     Open Inference Protocol v2 JSON
POST /v2/models/{slug}/versions/{version}/infer  the same, pinned to one version
POST /v1/models/{slug}/predict                   task-level JSON (image / rows / tensors)

A call that fails for any reason after the reservation gives the reservation back: a failed or
invalid call is never charged. Only a committed call (its usage event on the stream) is
answered 200.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import redis.exceptions
from fastapi import APIRouter, Request
from starlette.responses import Response

from metering import CallSpec, format_usd
from metering.metrics import CALLS, ERRORS, LATENCY, REJECTIONS, RELEASED
from serving import (
    AimarketError,
    InvalidInput,
    Manifest,
    PaymentRequired,
    ServiceUnavailable,
    decode_v2_request,
    encode_v2_response,
    postprocess,
    prepare,
)

from .errors import error_response
from .registry import LiveVersion
from .services import Services

router = APIRouter(tags=["inference"])

Decoded = tuple[dict[str, np.ndarray], Any]
Decoder = Callable[[Manifest, Any], Decoded]
Encoder = Callable[[LiveVersion, str, dict[str, np.ndarray], Any], dict[str, Any]]


def _v2_decode(manifest: Manifest, body: Any) -> Decoded:
    return decode_v2_request(body, manifest)


def _v2_encode(live: LiveVersion, rid: str, out: dict[str, np.ndarray], wanted: Any) -> dict:
    return encode_v2_response(live.slug, str(live.version), rid, out, wanted)


def _task_decode(manifest: Manifest, body: Any) -> Decoded:
    return prepare(manifest, body), None


def _task_encode(live: LiveVersion, rid: str, out: dict[str, np.ndarray], _: Any) -> dict:
    return {"model": live.slug, "version": live.version, "id": rid,
            **postprocess(live.manifest, out)}


@router.post("/v2/models/{slug}/infer")
async def v2_infer(slug: str, request: Request) -> Response:
    return await paid_call(request, slug, None, _v2_decode, _v2_encode)


@router.post("/v2/models/{slug}/versions/{version}/infer")
async def v2_infer_version(slug: str, version: int, request: Request) -> Response:
    return await paid_call(request, slug, version, _v2_decode, _v2_encode)


@router.post("/v1/models/{slug}/predict")
async def predict(slug: str, request: Request) -> Response:
    return await paid_call(request, slug, None, _task_decode, _task_encode)


async def paid_call(
    request: Request, slug: str, version: int | None, decode: Decoder, encode: Encoder
) -> Response:
    svc: Services = request.app.state.services
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    try:
        # 1 authenticate, find the live version, validate input: nothing is reserved yet
        key = await svc.keys.authenticate(request.headers.get("authorization"))
        live = await svc.registry.get(slug, version)
        inputs, extra = decode(live.manifest, _json(await request.body()))

        # 2 reserve a trial call or the price, in one Redis script
        try:
            res = await svc.meter.reserve(CallSpec(
                request_id=request_id, account_id=key.account_id, api_key_id=key.key_id,
                listing_id=live.listing_id, listing_version_id=live.version_id,
                seller_id=live.seller_id, price=live.price, trial_calls=live.trial_calls,
            ))
        except redis.exceptions.RedisError as exc:
            raise _metering_down() from exc
        if not res.ok:
            REJECTIONS.labels("credits").inc()
            raise PaymentRequired(
                f"free trial of {live.trial_calls} calls used up; a call costs "
                f"{format_usd(live.price)} USD and your credits are "
                f"{format_usd(res.credits_remaining)} USD",
                code="insufficient_credits",
                details={"price": format_usd(live.price),
                         "credits": format_usd(res.credits_remaining),
                         "trial_calls": live.trial_calls},
            )

        # 3 infer; 4 commit on success, release on any failure
        try:
            outputs = await svc.backend.infer(live.ref.key, inputs)
            body = orjson.dumps(encode(live, request_id, outputs, extra),
                                option=orjson.OPT_SERIALIZE_NUMPY)
            latency_us = int((time.perf_counter() - started) * 1e6)
            await svc.meter.commit(res, latency_us=latency_us)
        except BaseException as exc:
            try:
                await svc.meter.release(res)
                RELEASED.inc()
            except redis.exceptions.RedisError:
                pass  # the hold is repaired from the ledger, where this call never appears
            if isinstance(exc, redis.exceptions.RedisError):
                raise _metering_down() from exc
            raise

        # 5 respond
        CALLS.labels(live.slug, res.kind).inc()
        LATENCY.labels(live.slug).observe(time.perf_counter() - started)
        return Response(body, media_type="application/json", headers={
            "X-Request-Id": request_id, "X-Model-Version": str(live.version),
            "X-Cost": format_usd(res.cost), "X-Trial-Remaining": str(res.trial_remaining),
            "X-Credits-Remaining": format_usd(res.credits_remaining),
        })
    except AimarketError as exc:
        ERRORS.labels(exc.code).inc()
        response = error_response(exc)
        response.headers["X-Request-Id"] = request_id
        return response


def _json(raw: bytes) -> Any:
    if len(raw) > 32 * 1024 * 1024:
        raise InvalidInput("request body is larger than 32 MB")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


def _metering_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "metering is unavailable; the call was not served and not charged",
        code="metering_unavailable", headers={"Retry-After": "1"},
    )


unmetered = APIRouter(tags=["benchmark"])


@unmetered.post("/internal/unmetered/v2/models/{slug}/infer")
async def unmetered_infer(slug: str, request: Request) -> Response:
    """The same decode, inference and encode with no auth or metering (benchmarks only)."""
    svc: Services = request.app.state.services
    try:
        live = await svc.registry.get(slug)
        inputs, wanted = decode_v2_request(_json(await request.body()), live.manifest)
        outputs = await svc.backend.infer(live.ref.key, inputs)
        body = orjson.dumps(_v2_encode(live, uuid.uuid4().hex, outputs, wanted),
                            option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, media_type="application/json")
    except AimarketError as exc:
        return error_response(exc)
