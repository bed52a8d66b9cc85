"""Accounts: sign-up and the e-mail + password check, for the API and the pages alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, EmailStr, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from serving import Conflict, Unauthorized

from . import handles
from .models import Account, SignupRole
from .security import hash_password, verify_password


class NewAccount(BaseModel):
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)
    role: SignupRole
    name: str = Field("", max_length=120)
    handle: str | None = Field(
        None, max_length=40, description="public name (3-40 of a-z, 0-9, '-'); "
        "default: derived from the name or e-mail, de-duplicated")

    @field_validator("handle")
    @classmethod
    def _handle(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.lower()
        if not handles.is_valid(value):
            raise ValueError("a handle is 3-40 characters of a-z, 0-9 and '-' (not at either "
                             "end), and not a reserved word")
        return value


def account_json(a: Account) -> dict[str, Any]:
    return {"id": a.id, "email": a.email, "name": a.name, "handle": a.handle, "role": a.role,
            "created_at": a.created_at.isoformat()}


def create_account(db: Session, body: NewAccount) -> Account:
    """A new account; ``email_taken`` when the (lower-cased) e-mail has one already. The
    password is hashed first either way, so the two answers take the same time."""
    email = body.email.lower()
    password_hash = hash_password(body.password)
    for _attempt in range(3):
        if db.execute(select(Account.id).where(Account.email == email)).first():
            raise Conflict("an account with this e-mail exists", code="email_taken")
        if body.handle and db.execute(
                select(Account.id).where(Account.handle == body.handle)).first():
            raise Conflict(f"the handle '{body.handle}' is taken; choose another",
                           code="handle_taken")
        account = Account(email=email, name=body.name or email.split("@")[0],
                          password_hash=password_hash, role=body.role, handle=body.handle)
        db.add(account)
        try:
            db.commit()
            return account
        except IntegrityError:  # a sign-up at the same moment took the e-mail or handle
            db.rollback()  # the checks above now name which, or a derived handle moves on
    raise Conflict("sign-ups collided; send it again", code="signup_conflict")


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
