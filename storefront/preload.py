"""Load live versions at start while the model memory budget allows, the most called first.

The others load on their first call (``serving.local``). Runs as a background task after the
app is up: a large catalog does not delay the start, and a call for a model still loading
simply waits for it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from metering import UsageEvent
from serving import Backend, BackendRouter, LocalBackend, ModelRef

from .deployments import serving_options
from .models import Listing, ListingVersion
from .registry import to_live

log = logging.getLogger(__name__)


def by_calls(db: Session, data_dir: Path) -> list[ModelRef]:
    """Every live version of a listed listing, the most called first."""
    calls = (select(UsageEvent.listing_version_id, func.count().label("n"))
             .group_by(UsageEvent.listing_version_id).subquery())
    rows = db.execute(
        select(Listing, ListingVersion)
        .join(ListingVersion, ListingVersion.listing_id == Listing.id)
        .outerjoin(calls, calls.c.listing_version_id == ListingVersion.id)
        .where(Listing.status == "listed", ListingVersion.status == "live")
        .order_by(func.coalesce(calls.c.n, 0).desc(), ListingVersion.id.desc())
    ).all()
    return [to_live(listing, lv, data_dir, serving_options(db, listing.id)).ref
            for listing, lv in rows]


def _local(backend: Backend, ref: ModelRef) -> LocalBackend | None:
    """The local backend that would run ``ref``, if it is the local one."""
    if isinstance(backend, LocalBackend):
        return backend
    if isinstance(backend, BackendRouter):
        target = backend.backends.get(ref.serving.backend or backend.default)
        return target if isinstance(target, LocalBackend) else None
    return None


def _runs_here(backend: Backend, key: str) -> LocalBackend | None:
    """The local backend ``key`` is deployed on, if it is deployed on one."""
    if isinstance(backend, BackendRouter):
        where = backend.backend_of(key)
        backend = backend.backends[where] if where else backend
    return backend if isinstance(backend, LocalBackend) else None


def cold_start_ms(backend: Backend, key: str) -> float | None:
    """The measured load time of ``key`` in this process, where a local backend loaded it."""
    local = _runs_here(backend, key)
    return None if local is None else local.cold_start_ms(key)


def batching_view(backend: Backend, key: str) -> dict[str, Any] | None:
    """The batching counters of ``key`` in this process, where the local backend batches it
    or the triton backend coalesces its calls (None: not batched)."""
    if isinstance(backend, BackendRouter):
        where = backend.backend_of(key)
        backend = backend.backends[where] if where else backend
    stats_of = getattr(backend, "batch_stats", None)
    stats = stats_of(key) if callable(stats_of) else None
    return None if stats is None else asdict(stats)


def replicas_running(backend: Backend, key: str) -> int | None:
    """How many replicas of ``key`` run now, where its backend has replicas (Ray)."""
    if isinstance(backend, BackendRouter):
        where = backend.backend_of(key)
        backend = backend.backends[where] if where else backend
    count = getattr(backend, "replicas_running", None)
    return count(key) if callable(count) and backend.is_deployed(key) else None


async def preload(backend: Backend, refs: list[ModelRef]) -> int:
    """Deploy ``refs`` in order where each fits the budget; returns how many loaded."""
    loaded = 0
    for ref in refs:
        local = _local(backend, ref)
        if local is None or not local.has_room(ref):
            continue
        try:
            await backend.deploy(ref)
            loaded += 1
        except Exception:  # a broken model file must not stop the others from loading
            log.exception("preloading %s failed; it loads on its first call", ref.key)
    return loaded
