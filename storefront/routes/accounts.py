"""Sign-up, login (OAuth2 password flow) and the caller's own account."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from metering import format_usd
from serving import Conflict, Unauthorized

from ..deps import CurrentAccount, ServicesDep, SessionDep
from ..models import Account
from ..security import hash_password, issue_token, verify_password

router = APIRouter(tags=["accounts"])


class NewAccount(BaseModel):
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)
    role: Literal["buyer", "seller"]
    name: str = Field("", max_length=120)


def account_json(a: Account) -> dict[str, Any]:
    return {"id": a.id, "email": a.email, "name": a.name, "role": a.role,
            "created_at": a.created_at.isoformat()}


def create_account(body: NewAccount, db: SessionDep) -> dict[str, Any]:
    """Create the account (its JSON), or Conflict ``email_taken``. The password is hashed
    first either way, so the two answers take the same time."""
    email = body.email.lower()
    password_hash = hash_password(body.password)
    if db.execute(select(Account.id).where(Account.email == email)).first():
        raise Conflict("an account with this e-mail exists", code="email_taken")
    account = Account(email=email, name=body.name or email.split("@")[0],
                      password_hash=password_hash, role=body.role)
    db.add(account)
    try:
        db.commit()
    except IntegrityError as exc:
        raise Conflict("an account with this e-mail exists", code="email_taken") from exc
    return account_json(account)


@router.post("/v1/accounts", status_code=201)
def sign_up(body: NewAccount, db: SessionDep) -> dict[str, Any]:
    """The same answer whether or not the e-mail already has an account, so sign-up tells
    nobody which addresses are customers; an existing account is left untouched (its owner
    logs in with their own password)."""
    email = body.email.lower()
    with contextlib.suppress(Conflict):
        create_account(body, db)
    return {"email": email, "name": body.name or email.split("@")[0], "role": body.role,
            "next": "log in with POST /v1/auth/token"}


@router.post("/v1/auth/token")
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], db: SessionDep, svc: ServicesDep
) -> dict[str, Any]:
    account = db.execute(
        select(Account).where(Account.email == form.username.lower())
    ).scalar_one_or_none()
    if not verify_password(form.password, account.password_hash if account else None):
        raise Unauthorized("wrong e-mail or password", code="invalid_credentials")
    assert account is not None
    token = issue_token(account.id, key=svc.signing_key,
                        minutes=svc.settings.access_token_minutes)
    return {"access_token": token, "token_type": "bearer",
            "expires_in": svc.settings.access_token_minutes * 60}


@router.get("/v1/account")
async def me(account: CurrentAccount, svc: ServicesDep) -> dict[str, Any]:
    return {**account_json(account), "credits": format_usd(await svc.meter.credits(account.id))}
