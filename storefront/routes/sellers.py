"""Sellers' public profiles."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import sellers
from ..deps import SessionDep

router = APIRouter(tags=["sellers"])


@router.get("/v1/sellers/{name}")
def seller_profile(name: str, db: SessionDep) -> dict[str, Any]:
    """A seller by public handle: listed models, total calls served, average rating over their
    models' reviews, member since."""
    return sellers.profile(db, name)
