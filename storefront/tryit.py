"""The demo call behind a listing's Try it box: the paid call's path, as a demo call.

find the live version -> validate input -> take a demo slot of the listing -> reserve (a
signed-in buyer's free trial call first, else the visitor's daily demo quota) -> infer ->
commit or release. Never charged; committed as a usage event the seller sees.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from metering import DEMO, CallSpec, Reservation
from metering.metrics import CALLS, ERRORS, LATENCY
from serving import AimarketError, TooManyRequests, postprocess, prepare_call

from .registry import LiveVersion
from .services import Services
from .throttle import check_demo

# What a demo call does with the prepared inputs once its demo slot and hold are taken:
# (live version, model inputs, postprocess context) -> the answer. By default the hosted
# model's answer; "Compare with the export" runs the export beside it.
DemoRun = Callable[[LiveVersion, dict[str, np.ndarray], Any], Awaitable[dict[str, Any]]]

ANONYMOUS = 0  # the account id demo events of visitors who are not signed in carry


@dataclass(frozen=True)
class Visitor:
    """Who makes a demo call: a signed-in account (or None) and the client's address."""

    account_id: int | None
    address: str

    @property
    def quota_key(self) -> str:
        who = f"a{self.account_id}" if self.account_id else f"ip{self.address}"
        return hashlib.sha256(who.encode()).hexdigest()[:24]


async def demo_call(svc: Services, slug: str, payload: Any, visitor: Visitor,
                    run: DemoRun | None = None) -> dict[str, Any]:
    """Run one demo call; the answer carries the predictions (or what ``run`` answers) and
    what the visitor has left."""
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    settings = svc.settings
    limit = settings.demo_calls_per_day
    try:
        await check_demo(svc, visitor.address)  # per address, signed in or not
        live = await svc.registry.get(slug)
        # the payload is already parsed: decoding images, audio or texts runs off the loop
        inputs, context = await run_in_threadpool(prepare_call, live.manifest, payload)
        call = CallSpec(
            request_id=request_id, account_id=visitor.account_id or ANONYMOUS, api_key_id=None,
            listing_id=live.listing_id, listing_version_id=live.version_id,
            seller_id=live.seller_id, price=live.price, trial_calls=live.trial_calls,
        )
        async with svc.demos.slot(live.listing_id, settings.demo_concurrency) as free:
            if not free:
                raise TooManyRequests(
                    f"this demo is busy ({settings.demo_concurrency} calls running); "
                    "try again in a moment", code="demo_busy", headers={"Retry-After": "1"})
            async with svc.demos.hold(call, visitor.quota_key, limit, started=started,
                                      refuse=lambda _: _quota_used_up(limit)) as res:
                if run is None:
                    outputs = await svc.backend.infer(live.ref.key, inputs)
                    answer = await run_in_threadpool(postprocess, live.manifest, outputs,
                                                     context)
                else:
                    answer = await run(live, inputs, context)
    except AimarketError as exc:
        ERRORS.labels(exc.code).inc()
        raise
    CALLS.labels(live.slug, res.kind).inc()
    LATENCY.labels(live.slug).observe(time.perf_counter() - started)
    left = await svc.demos.remaining(visitor.quota_key, limit)
    return {**answer, "id": request_id, "model": live.slug, "version": live.version,
            "kind": res.kind, "trial_remaining": res.trial_remaining if res.kind != DEMO else 0,
            "demo_remaining": left, "remaining_text": _remaining_text(res, left)}


def _quota_used_up(limit: int) -> TooManyRequests:
    return TooManyRequests(
        f"the {limit} free demo calls of today are used up; sign up for free trial calls "
        "and an API key, or come back tomorrow (UTC)", code="demo_quota_exhausted")


def _remaining_text(res: Reservation, demo_left: int) -> str:
    demos = f"{demo_left} free demo call{'' if demo_left == 1 else 's'}"
    if res.kind == DEMO:
        return f"{demos} left today"
    n = res.trial_remaining
    return f"{n} free trial call{'' if n == 1 else 's'} left on this model, then {demos} today"
