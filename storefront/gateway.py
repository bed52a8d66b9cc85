"""The paid call, top to bottom: authenticate, reserve, infer, commit or release, respond.

POST /v2/models/{slug}/infer                     Open Inference Protocol v2 JSON
POST /v2/models/{slug}/versions/{version}/infer  the same, pinned to one version
POST /v1/models/{slug}/predict                   task-level JSON (image / rows / tensors)

A call that fails for any reason after the reservation gives the reservation back: a failed or
invalid call is never charged. Only a committed call (its usage event on the stream) is
answered 200.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from metering import CallSpec, Reservation, format_usd
from metering.metrics import ERRORS, REJECTIONS, answered
from serving import (
    AimarketError,
    InvalidInput,
    Manifest,
    PaymentRequired,
    TooManyRequests,
    decode_v2_request,
    encode_v2_response,
    parse_v2_body,
    postprocess,
    prepare_call,
)
from serving.tasks import INLINE_BODY_BYTES

from .deps import Id
from .errors import error_response
from .keys import KeyPrincipal
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
    return prepare_call(manifest, body)  # tensors and what postprocess needs (placements)


def _task_encode(live: LiveVersion, rid: str, out: dict[str, np.ndarray], context: Any) -> dict:
    return {"model": live.slug, "version": live.version, "id": rid,
            **postprocess(live.manifest, out, context)}


def _decode_body(decode: Decoder, manifest: Manifest, raw: bytes, header: str | None) -> Decoded:
    return decode(manifest, _json(raw, header))


def _encode_body(encode: Encoder, live: LiveVersion, rid: str, out: dict[str, np.ndarray],
                 extra: Any) -> bytes:
    return orjson.dumps(encode(live, rid, out, extra), option=orjson.OPT_SERIALIZE_NUMPY)


@router.post("/v2/models/{slug}/infer")
async def v2_infer(slug: str, request: Request) -> Response:
    return await paid_call(request, slug, None, _v2_decode, _v2_encode)


@router.post("/v2/models/{slug}/versions/{version}/infer")
async def v2_infer_version(slug: str, version: Id, request: Request) -> Response:
    return await paid_call(request, slug, version, _v2_decode, _v2_encode)


@router.post("/v1/models/{slug}/predict")
async def predict(slug: str, request: Request) -> Response:
    return await paid_call(request, slug, None, _task_decode, _task_encode)


async def paid_call(
    request: Request, slug: str, version: int | None, decode: Decoder, encode: Encoder
) -> Response:
    svc: Services = request.app.state.services
    started = time.perf_counter()
    # time-ordered (microseconds, then 72 random bits): the ledger's primary key grows at its
    # end, as cheap to insert as a sequence; a tenth of uuid4().hex's cost
    request_id = f"{time.time_ns() // 1000:014x}{os.urandom(9).hex()}"
    try:
        # 1 authenticate, find the live version, validate input: nothing is reserved yet
        key = await svc.keys.authenticate(request.headers.get("authorization"))
        live = await svc.registry.get(slug, version)
        raw = await request.body()
        header = request.headers.get("inference-header-content-length")
        # a large body (images, audio, many texts) is parsed and decoded in a worker thread:
        # the event loop keeps serving other calls meanwhile; a small one inline, for speed
        offload = len(raw) > INLINE_BODY_BYTES
        if offload:
            inputs, extra = await run_in_threadpool(_decode_body, decode, live.manifest, raw,
                                                    header)
        else:
            inputs, extra = _decode_body(decode, live.manifest, raw, header)

        # 2 reserve a trial call or the price, in one Redis script (refused: 402 / 429);
        # 3 infer; 4 commit when the block succeeds, release when it raises
        call = CallSpec(
            request_id=request_id, account_id=key.account_id, api_key_id=key.key_id,
            listing_id=live.listing_id, listing_version_id=live.version_id,
            seller_id=live.seller_id, price=live.price, trial_calls=live.trial_calls,
            key_rps=key.rps, key_burst=key.burst, listing_rps=live.rate_rps,
            listing_burst=live.rate_burst, cap_day=key.cap_day, cap_month=key.cap_month,
            credit_line=key.credit_line,
        )
        async with svc.meter.hold(call, refuse=partial(_refused, live, key),
                                  started=started) as res:
            outputs = await svc.backend.infer(live.ref.key, inputs)
            if offload:  # masks at the images' size are PNG-encoded here: off the loop too
                body = await run_in_threadpool(_encode_body, encode, live, request_id, outputs,
                                               extra)
            else:
                body = _encode_body(encode, live, request_id, outputs, extra)

        # 5 respond
        answered(live.slug, res.kind, time.perf_counter() - started)
        response = Response(body, media_type="application/json")
        response.raw_headers += [
            (b"x-request-id", request_id.encode()),
            (b"x-model-version", str(live.version).encode()),
            (b"x-cost", format_usd(res.cost).encode()),
            (b"x-trial-remaining", str(res.trial_remaining).encode()),
            (b"x-credits-remaining", format_usd(res.credits_remaining).encode()),
            *((k.lower().encode(), v.encode()) for k, v in _rate_headers(res).items()),
            *live.deprecation,  # Deprecation / Sunset / Link of a deprecated version
        ]
        return response
    except AimarketError as exc:
        ERRORS.labels(exc.code).inc()
        response = error_response(exc)
        response.headers["X-Request-Id"] = request_id
        return response


def _rate_headers(res: Reservation) -> dict[str, str]:
    if res.rate_limit < 0:
        return {}
    return {"RateLimit-Limit": str(res.rate_limit),
            "RateLimit-Remaining": str(max(res.rate_remaining, 0)),
            "RateLimit-Reset": str(math.ceil(res.rate_reset_ms / 1000))}


def _refused(live: LiveVersion, key: KeyPrincipal, res: Reservation) -> AimarketError:
    """The error for a call metering refused, with the numbers the caller needs."""
    REJECTIONS.labels("cap" if res.refusal.startswith("cap") else res.refusal).inc()
    headers = _rate_headers(res)
    if res.refusal == "rate":
        wait = max(1, math.ceil(res.retry_after_ms / 1000))
        return TooManyRequests(
            f"rate limit exceeded: at most {res.rate_limit} calls at once, refilled at "
            f"{key.rps:g}/s for this key{' and listing' if live.rate_rps else ''}; "
            f"retry after {wait} s",
            code="rate_limited", headers={**headers, "Retry-After": str(wait)},
        )
    if res.refusal in ("cap_day", "cap_month"):
        period = "daily" if res.refusal == "cap_day" else "monthly"
        cap = key.cap_day if res.refusal == "cap_day" else key.cap_month
        return PaymentRequired(
            f"this API key's {period} spend cap of {format_usd(cap or 0)} USD is reached; "
            f"a call costs {format_usd(live.price)} USD. Raise the cap with PATCH /v1/keys/{{id}}",
            code="spend_cap_reached", headers=headers,
            details={"period": period, "cap": format_usd(cap or 0),
                     "price": format_usd(live.price)},
        )
    return PaymentRequired(
        f"free trial of {live.trial_calls} calls used up; a call costs "
        f"{format_usd(live.price)} USD and your credits are "
        f"{format_usd(res.credits_remaining)} USD",
        code="insufficient_credits", headers=headers,
        details={"price": format_usd(live.price), "credits": format_usd(res.credits_remaining),
                 "trial_calls": live.trial_calls},
    )


def _json(raw: bytes, binary_header_length: str | None = None) -> Any:
    if len(raw) > 32 * 1024 * 1024:
        raise InvalidInput("request body is larger than 32 MB")
    return parse_v2_body(raw, binary_header_length)


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
