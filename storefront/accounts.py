"""Accounts: sign-up and the e-mail + password check, for the API and the pages alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, EmailStr, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from serving import Conflict, Unauthorized

from .models import Account, SignupRole
from .security import hash_password, verify_password


class NewAccount(BaseModel):
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)
    role: SignupRole
    name: str = Field("", max_length=120)


def account_json(a: Account) -> dict[str, Any]:
    return {"id": a.id, "email": a.email, "name": a.name, "role": a.role,
            "created_at": a.created_at.isoformat()}


def create_account(db: Session, body: NewAccount) -> Account:
    """A new account; ``email_taken`` when the (lower-cased) e-mail has one already. The
    password is hashed first either way, so the two answers take the same time."""
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
    return account


def find_account(db: Session, email: str) -> Account | None:
    return db.execute(select(Account).where(Account.email == email.lower())).scalar_one_or_none()


def authenticate(account: Account | None, password: str) -> bool:
    """Whether ``password`` is the account's; as slow for no account as for a wrong password."""
    return verify_password(password, account.password_hash if account else None)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=256)
    new_password: str = Field(min_length=8, max_length=256)


def revoke_sessions(db: Session, account: Account) -> None:
    """End every session of ``account``: its access tokens (cookies, bearer tokens) issued
    before now answer 401. API keys are not sessions and stay (they are revoked one by one)."""
    account.session_epoch = (account.session_epoch or 0) + 1
    db.commit()


def change_password(db: Session, account: Account, change: PasswordChange) -> None:
    """Set a new password (the current one proven) and end every session of the account."""
    if not verify_password(change.current_password, account.password_hash):
        raise Unauthorized("the current password is wrong", code="invalid_credentials")
    account.password_hash = hash_password(change.new_password)
    revoke_sessions(db, account)
