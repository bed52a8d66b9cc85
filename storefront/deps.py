"""FastAPI dependencies as Annotated aliases: the services, a DB session, the caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from annotated_types import Ge, Le
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from serving import Forbidden, Unauthorized

from .models import Account, holders
from .security import read_claims, session_valid
from .services import Services

MAX_ID = 2**31 - 1
# Every id or version number a route takes, in a path or a body: a positive int32, as the
# INTEGER columns that hold ids and versions (PostgreSQL's is 4 bytes), so one that no column
# can hold answers 422 instead of a database error (2**31..2**63 was a 500 on PostgreSQL).
Id = Annotated[int, Ge(1), Le(MAX_ID)]

oauth2 = OAuth2PasswordBearer(tokenUrl="/v1/auth/token", auto_error=False)


def get_services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(svc: ServicesDep) -> Iterator[Session]:
    with svc.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def current_account(
    svc: ServicesDep, db: SessionDep, token: Annotated[str | None, Depends(oauth2)]
) -> Account:
    if not token:
        raise Unauthorized(
            "log in first: send 'Authorization: Bearer <access token>' from /v1/auth/token",
            code="not_authenticated",
        )
    account_id, epoch = read_claims(token, key=svc.signing_key)
    account = db.get(Account, account_id)
    if account is None:
        raise Unauthorized("account no longer exists", code="invalid_token")
    if not session_valid(epoch, account.session_epoch):
        raise Unauthorized("this session has ended (logged out, password changed or "
                           "revoked); log in again", code="session_revoked")
    return account


CurrentAccount = Annotated[Account, Depends(current_account)]


def _role(role: str) -> Callable[[Account], Account]:
    roles = holders(role)

    def check(account: CurrentAccount) -> Account:
        if account.role not in roles:
            raise Forbidden(f"this needs a {' or '.join(roles)} account", code="wrong_role")
        return account
    return check


Seller = Annotated[Account, Depends(_role("seller"))]
Buyer = Annotated[Account, Depends(_role("buyer"))]
Admin = Annotated[Account, Depends(_role("admin"))]
