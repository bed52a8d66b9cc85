"""Sign-up, login (OAuth2 password flow) and the caller's own account."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm

from metering import format_usd
from serving import Conflict, Unauthorized

from .. import accounts
from ..accounts import NewAccount, account_json
from ..deps import CurrentAccount, ServicesDep, SessionDep
from ..security import issue_token

router = APIRouter(tags=["accounts"])


@router.post("/v1/accounts", status_code=201)
def sign_up(body: NewAccount, db: SessionDep) -> dict[str, Any]:
    """The same answer whether or not the e-mail already has an account, so sign-up tells
    nobody which addresses are customers; an existing account is left untouched (its owner
    logs in with their own password)."""
    email = body.email.lower()
    with contextlib.suppress(Conflict):
        accounts.create_account(db, body)
    return {"email": email, "name": body.name or email.split("@")[0], "role": body.role,
            "next": "log in with POST /v1/auth/token"}


@router.post("/v1/auth/token")
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], db: SessionDep, svc: ServicesDep
) -> dict[str, Any]:
    account = accounts.find_account(db, form.username)
    if not accounts.authenticate(account, form.password) or account is None:
        raise Unauthorized("wrong e-mail or password", code="invalid_credentials")
    token = issue_token(account.id, key=svc.signing_key,
                        minutes=svc.settings.access_token_minutes)
    return {"access_token": token, "token_type": "bearer",
            "expires_in": svc.settings.access_token_minutes * 60}


@router.get("/v1/account")
async def me(account: CurrentAccount, svc: ServicesDep) -> dict[str, Any]:
    return {**account_json(account), "credits": format_usd(await svc.meter.credits(account.id))}
