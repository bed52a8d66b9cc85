"""What buyers spent and sellers earned, read from the SQL ledger."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from .. import limits as quotas
from .. import usage as ledger
from ..deps import Buyer, Seller, ServicesDep, SessionDep

router = APIRouter(tags=["usage"])


@router.get("/v1/usage")
async def usage(
    account: Buyer, svc: ServicesDep, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> dict[str, Any]:
    """Calls and spend per listing (all time) and per UTC day and listing (last ``days``)."""
    return await ledger.usage(svc, account, days)


@router.get("/v1/seller/earnings")
def earnings(seller: Seller, db: SessionDep) -> dict[str, Any]:
    return ledger.earnings(db, seller)


@router.get("/v1/account/limits")
async def limits(
    account: Buyer, svc: ServicesDep,
    slug: Annotated[str | None, Query(max_length=80)] = None,
) -> dict[str, Any]:
    """Credits; per active key its rate limit and daily / monthly caps with the spend so far
    (UTC, from the ledger) and what is left; free trial calls left per listing called (or of
    ``slug``)."""
    return await quotas.limits(svc, account, slug)
