"""Live listing versions as the paid-call path needs them, cached in-process with a short TTL."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from serving import (
    Backend,
    Manifest,
    ModelRef,
    NotFound,
    ServiceUnavailable,
    ServingOptions,
    model_key,
)

from . import lifecycle
from .deployments import serving_options
from .filemodes import share_model
from .models import Listing, ListingVersion

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LiveVersion:
    listing_id: int
    version_id: int
    slug: str
    version: int
    seller_id: int
    price: int
    trial_calls: int
    manifest: Manifest
    ref: ModelRef
    rate_rps: float = 0  # per key on this listing; 0: only the key's own limit
    rate_burst: int = 0
    # a deprecated version: its response headers, and when it stops answering (epoch s)
    deprecation: lifecycle.Headers = ()
    sunset_ts: float = math.inf


def model_path(data_dir: Path, sha256: str) -> Path:
    """Where the content-addressed model with this digest lives."""
    return data_dir / "models" / sha256[:2] / f"{sha256}.onnx"


class Registry:
    """slug (and optional version) -> LiveVersion; deploys on first use in this worker."""

    def __init__(self, engine: Engine, backend: Backend, data_dir: Path, ttl: float = 5.0,
                 load_wait_s: float = 30.0) -> None:
        self.engine = engine
        self.load_wait_s = load_wait_s
        self._deploying: dict[str, asyncio.Task[None]] = {}
        self.backend = backend
        self.data_dir = data_dir
        self.ttl = ttl
        self._cache: dict[tuple[str, int | None], tuple[float, LiveVersion]] = {}
        # pinned versions past their sunset, so that their 410s read no database either
        self._retired: dict[tuple[str, int], tuple[float, datetime]] = {}

    async def get(self, slug: str, version: int | None = None) -> LiveVersion:
        hit = self._cache.get((slug, version))
        now = time.monotonic()
        if hit is not None and hit[0] > now and self.backend.is_deployed(hit[1].ref.key) \
                and (hit[1].sunset_ts == math.inf or hit[1].sunset_ts > time.time()):
            return hit[1]
        retired = self._retired.get((slug, version)) if version is not None else None
        if retired is not None and retired[0] > now:
            raise lifecycle.sunset_error(slug, version or 0, retired[1])
        live = await run_in_threadpool(self._load, slug, version)
        if live is None:
            what = f"{slug} version {version}" if version is not None else slug
            raise NotFound(f"no live model '{what}'", code="model_not_found")
        if live.sunset_ts <= time.time():  # pinned to a retired version: refused, uncharged
            sunset = datetime.fromtimestamp(live.sunset_ts, UTC)
            self._retired[(slug, live.version)] = (now + self.ttl, sunset)
            raise lifecycle.sunset_error(live.slug, live.version, sunset)
        if self.backend.is_deployed(live.ref.key):
            await self.backend.deploy(live.ref)  # applies changed serving options
        else:
            await self._deploy(live.ref)
        self._cache[(slug, version)] = (now + self.ttl, live)
        return live

    async def deploy_live(self) -> list[str]:
        """Deploy every live version of every listed listing (at start, so that no call waits
        for a deployment); one that fails is logged and left to its first call. The keys."""
        done = []
        for live in await run_in_threadpool(self._all_live):
            try:
                await self.backend.deploy(live.ref)
            except Exception:
                log.exception("deploying %s at start failed; its first call tries again",
                              live.ref.key)
                continue
            done.append(live.ref.key)
        return done

    def _all_live(self) -> list[LiveVersion]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(Listing, ListingVersion)
                .join(ListingVersion, ListingVersion.listing_id == Listing.id)
                .where(Listing.status == "listed", ListingVersion.status == "live")
                .order_by(Listing.id, ListingVersion.version)).all()
            return [to_live(listing, lv, self.data_dir, serving_options(s, listing.id))
                    for listing, lv in rows]
    async def _deploy(self, ref: ModelRef) -> None:
        """Deploy on first use here, waiting at most ``load_wait_s``: past it the call is
        503 with Retry-After (nothing is reserved yet) and the load goes on for the next."""
        task = self._deploying.get(ref.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self.backend.deploy(ref))
            self._deploying[ref.key] = task
            task.add_done_callback(lambda t: (self._deploying.pop(ref.key, None),
                                              t.cancelled() or t.exception()))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.load_wait_s)
        except TimeoutError:
            wait = max(1, math.ceil(self.load_wait_s))
            raise ServiceUnavailable(
                f"model {ref.key} is loading; retry in {wait} s (this call was not charged)",
                code="backend_unavailable", headers={"Retry-After": str(wait)},
            ) from None

    def invalidate(self, slug: str) -> None:
        for k in [k for k in self._cache if k[0] == slug]:
            del self._cache[k]
        for r in [r for r in self._retired if r[0] == slug]:
            del self._retired[r]

    def _load(self, slug: str, version: int | None) -> LiveVersion | None:
        with Session(self.engine) as s:
            row = live_row(s, slug, version)
            if row is None:
                retired = None if version is not None else live_row(s, slug, sunset=True)
                if retired is not None:  # every live version is past its sunset
                    raise lifecycle.sunset_error(slug, retired[1].version, retired[1].sunset_at)
                return None
            return to_live(*row, self.data_dir, serving_options(s, row[0].id))


def live_row(db: Session, slug: str, version: int | None = None, *, sunset: bool = False
             ) -> tuple[Listing, ListingVersion] | None:
    """A listed listing and the live version unpinned calls go to: the newest one not
    deprecated, else the newest one before its sunset (``sunset=True``: the newest past
    it). With ``version``: that live version, whatever its deprecation."""
    q = (
        select(Listing, ListingVersion)
        .join(ListingVersion, ListingVersion.listing_id == Listing.id)
        .where(Listing.slug == slug, Listing.status == "listed", ListingVersion.status == "live")
    )
    order: list[Any] = [ListingVersion.version.desc()]
    if version is not None:
        q = q.where(ListingVersion.version == version)
    elif sunset:
        q = q.where(ListingVersion.sunset_at <= datetime.now(UTC))
    else:
        q = q.where(or_(ListingVersion.sunset_at.is_(None),
                        ListingVersion.sunset_at > datetime.now(UTC)))
        order.insert(0, ListingVersion.deprecated_at.is_(None).desc())
    row = db.execute(q.order_by(*order).limit(1)).first()
    return None if row is None else (row[0], row[1])


def to_live(listing: Listing, lv: ListingVersion, data_dir: Path,
            serving: ServingOptions | None = None) -> LiveVersion:
    manifest = Manifest.model_validate_json(lv.manifest_json)
    limit = manifest.rate_limit
    path = model_path(data_dir, lv.model_sha256)
    share_model(path)  # AIMARKET_GROUP_READABLE_MODELS: what a backend loads, the group reads
    return LiveVersion(
        listing_id=listing.id, version_id=lv.id, slug=listing.slug, version=lv.version,
        seller_id=listing.seller_id, price=lv.price, trial_calls=lv.trial_calls,
        manifest=manifest,
        rate_rps=limit.rps if limit else 0, rate_burst=limit.burst if limit else 0,
        deprecation=lifecycle.headers(listing.slug, lv.deprecated_at, lv.sunset_at),
        sunset_ts=(sunset.timestamp() if (sunset := lifecycle.as_utc(lv.sunset_at))
                   else math.inf),
        ref=ModelRef(key=model_key(listing.slug, lv.version),
                     path=path, sha256=lv.model_sha256,
                     latency_us=lv.latency_us, serving=serving or ServingOptions(),
                     max_batch=manifest.max_batch),
    )
