"""What buyers spent and sellers earned, read from the SQL ledger."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

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
