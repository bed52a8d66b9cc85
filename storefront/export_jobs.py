"""Bundles built on the site in the background: the model page queues a build (a row in
``export_jobs``), a small pool of threads runs ``purchases.build_export`` (the function the
API's ``POST /v1/exports`` answers with), and the job's page follows it: queued -> building ->
done (the export) or failed (the reason). The row lives in the database, so any gateway
process can show it."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from serving import AimarketError, Conflict, Forbidden, NotFound

from .db import rows_changed
from .models import Account, ExportJob
from .purchases import build_export, licence_of, live_listing, parse_choice

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)
ACTIVE = ("queued", "building")
MAX_ACTIVE = 3  # builds one buyer may have queued or running at a time
# A build not finished after this was cut short (the process stopped): shown as failed.
STALE = timedelta(minutes=30)
# Builds are CPU-bound (conversion, quantization, the agreement check): two at a time.
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="export-build")


def start(svc: Services, buyer: Account, slug: str, choice: str) -> str:
    """Queue the build of the buyer's bundle of ``slug`` for ``choice`` (``target:precision``
    from the model page's picker); the job's id. Refused before queueing: no such listing,
    no licence, an unknown target or precision, too many builds running."""
    target, precision = parse_choice(choice)
    with svc.sessions() as db:
        listing, _ = live_listing(db, slug)
        if licence_of(db, buyer, listing.id) is None:
            raise Forbidden(f"buy the export licence of '{slug}' first", code="no_license")
        running = db.execute(select(func.count()).select_from(ExportJob).where(
            ExportJob.buyer_id == buyer.id, ExportJob.state.in_(ACTIVE),
            ExportJob.updated_at > _now() - STALE)).scalar_one()
        if running >= MAX_ACTIVE:
            raise Conflict(f"you have {running} bundles building; wait for one to finish",
                           code="builds_in_progress")
        job = ExportJob(id=uuid.uuid4().hex, buyer_id=buyer.id, slug=slug, target=target,
                        precision=precision, state="queued", error="")
        db.add(job)
        db.commit()
        job_id = job.id
    _pool.submit(run, svc, job_id)
    return job_id


def _now() -> datetime:
    return datetime.now(UTC)


def _set(svc: Services, job_id: str, **values: Any) -> None:
    with svc.sessions() as db:
        db.execute(update(ExportJob).where(ExportJob.id == job_id)
                   .values(updated_at=_now(), **values))
        db.commit()


def resume(svc: Services) -> int:
    """Queue again the builds a stopped process left queued (at start; several processes may
    find the same job: ``run`` claims it atomically, so it is built once). How many."""
    with svc.sessions() as db:
        waiting = db.execute(select(ExportJob.id).where(
            ExportJob.state == "queued", ExportJob.updated_at > _now() - STALE)).scalars().all()
    for job_id in waiting:
        _pool.submit(run, svc, job_id)
    return len(waiting)


def _claim(svc: Services, job_id: str) -> bool:
    """queued -> building, for one process only."""
    with svc.sessions() as db:
        won = rows_changed(db.execute(update(ExportJob).where(
            ExportJob.id == job_id, ExportJob.state == "queued")
            .values(state="building", updated_at=_now())))
        db.commit()
    return won == 1


def run(svc: Services, job_id: str) -> None:
    """Build one queued job's bundle; never raises (the job records how it ended)."""
    try:
        with svc.sessions() as db:
            job = db.get(ExportJob, job_id)
            buyer = db.get(Account, job.buyer_id) if job is not None else None
            if job is None or buyer is None or job.state != "queued":
                return
            db.expunge(buyer)
            slug, target, precision = job.slug, job.target, job.precision
        if not _claim(svc, job_id):  # another process took it
            return
        try:
            made = build_export(svc, buyer, slug, None, target, precision)
        except AimarketError as exc:
            _set(svc, job_id, state="failed", error=exc.message[:2000])
            return
        except Exception:
            log.exception("export job %s (%s, %s) failed", job_id, slug, target)
            _set(svc, job_id, state="failed",
                 error="the bundle could not be built; try again or choose another target")
            return
        _set(svc, job_id, state="done", export_id=made["id"])
    except Exception:  # the database went away (e.g. the app is stopping): nothing to record
        log.exception("export job %s could not be run", job_id)


def view(db: Session, job_id: str, account: Account) -> dict[str, Any]:
    """The job as its page shows it; 404 unless ``account`` asked for it (or is an admin)."""
    job = db.get(ExportJob, job_id)
    if job is None or (job.buyer_id != account.id and account.role != "admin"):
        raise NotFound(f"no bundle build '{job_id}'", code="export_job_not_found")
    state, error = job.state, job.error
    updated = job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=UTC)
    if state in ACTIVE and updated < _now() - STALE:
        state, error = "failed", "the build was interrupted; start it again"
    return {"id": job.id, "slug": job.slug, "target": job.target,
            "precision": job.precision, "state": state, "error": error,
            "export_id": job.export_id, "finished": state not in ACTIVE,
            "created_at": job.created_at.isoformat()}
