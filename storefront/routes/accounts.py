"""Sign-up, login (OAuth2 password flow) and the caller's own account."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from starlette.concurrency import run_in_threadpool

from metering import format_usd
from serving import Conflict, Unauthorized

from .. import accounts, throttle
from ..accounts import NewAccount, PasswordChange, account_json
from ..deps import CurrentAccount, ServicesDep, SessionDep
from ..security import issue_token

router = APIRouter(tags=["accounts"])


@router.post("/v1/accounts", status_code=201)
async def sign_up(
    body: NewAccount, db: SessionDep, svc: ServicesDep, request: Request
) -> dict[str, Any]:
    """The same answer whether or not the e-mail already has an account, so sign-up tells
    nobody which addresses are customers; an existing account is left untouched (its owner
    logs in with their own password). Sign-ups of one address are throttled (429)."""
    await throttle.check_signup(svc, throttle.request_address(request, svc))
    email = body.email.lower()
    try:
        await run_in_threadpool(accounts.create_account, db, body)
    except Conflict as exc:
        if exc.code != "email_taken":  # handles are public: a taken one may be said
            raise
    return {"email": email, "name": body.name or email.split("@")[0], "role": body.role,
            "next": "log in with POST /v1/auth/token"}


@router.post("/v1/auth/token")
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], db: SessionDep, svc: ServicesDep,
    request: Request,
) -> dict[str, Any]:
    """An access token; failed logins of one address are throttled (429 with Retry-After)."""
    address = throttle.request_address(request, svc)
    await throttle.check_login(svc, address, form.username)
    account = await run_in_threadpool(accounts.find_account, db, form.username)
    ok = await run_in_threadpool(accounts.authenticate, account, form.password)
    if not ok or account is None:
        await throttle.login_failed(svc, address, form.username)
        raise Unauthorized("wrong e-mail or password", code="invalid_credentials")
    token = issue_token(account.id, key=svc.signing_key,
                        minutes=svc.settings.access_token_minutes,
                        session=account.session_epoch)
    return {"access_token": token, "token_type": "bearer",
            "expires_in": svc.settings.access_token_minutes * 60}


@router.get("/v1/account")
async def me(account: CurrentAccount, svc: ServicesDep) -> dict[str, Any]:
    return {**account_json(account), "credits": format_usd(await svc.meter.credits(account.id))}


@router.post("/v1/auth/logout")
def logout(account: CurrentAccount, db: SessionDep) -> dict[str, Any]:
    """End every session of the caller: each access token issued so far (this one, browser
    cookies) answers 401 from now on. API keys stay valid."""
    accounts.revoke_sessions(db, account)
    return {"status": "logged_out"}


@router.post("/v1/account/password")
def change_password(body: PasswordChange, account: CurrentAccount, db: SessionDep
                    ) -> dict[str, Any]:
    """Change the password (the current one proven); every session ends: log in again."""
    accounts.change_password(db, account, body)
    return {"status": "password_changed", "next": "log in with POST /v1/auth/token"}
