"""Browser sessions: the access token in an HttpOnly cookie, and CSRF tokens for forms.

CSRF: a random nonce lives in a cookie; every form carries HMAC(secret, nonce), which only
this server can compute, and a POST is refused unless the two agree (signed double submit).
The session cookie is SameSite=Lax as a second line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from serving import AimarketError, Forbidden

from ..models import Account, holders
from ..security import issue_token, read_claims, session_valid
from ..services import Services

SESSION_COOKIE = "am_session"
CSRF_COOKIE = "am_csrf"


class LoginRequired(Exception):
    """The page needs a signed-in account: the handler redirects to /login."""


class PageForbidden(Forbidden):
    """A page refused: rendered as an HTML page with status 403."""


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _claims(request: Request, svc: Services) -> tuple[int, int] | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return read_claims(token, key=svc.signing_key)
    except AimarketError:
        return None


def account_id(request: Request, svc: Services) -> int | None:
    """The signed-in account's id from the session cookie, or None (also when the session
    was revoked: one primary-key read)."""
    if not request.cookies.get(SESSION_COOKIE):
        return None
    with svc.sessions() as db:
        account = _signed_in(request, db, svc)
        return None if account is None else account.id


def current(request: Request, db: Session) -> Account | None:
    """The signed-in account, or None: no cookie, a bad or expired one, or a revoked session."""
    return _signed_in(request, db, services(request))


def _signed_in(request: Request, db: Session, svc: Services) -> Account | None:
    claims = _claims(request, svc)
    if claims is None:
        return None
    account = db.get(Account, claims[0])
    if account is None or not session_valid(claims[1], account.session_epoch):
        return None
    return account


def require(request: Request, db: Session, role: str) -> Account:
    """The signed-in account if it has ``role`` (as the API decides); else LoginRequired or
    Forbidden."""
    account = current(request, db)
    if account is None:
        raise LoginRequired
    if account.role not in holders(role):
        raise PageForbidden(f"this page needs a {' or '.join(holders(role))} account",
                            code="wrong_role")
    return account


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def start_session(response: Response, request: Request, svc: Services, account: Account) -> None:
    token = issue_token(account.id, key=svc.signing_key,
                        minutes=svc.settings.access_token_minutes,
                        session=account.session_epoch)
    response.set_cookie(SESSION_COOKIE, token, max_age=svc.settings.access_token_minutes * 60,
                        httponly=True, samesite="lax", secure=request.url.scheme == "https",
                        path="/")


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def csrf_nonce(request: Request) -> str:
    """This browser's CSRF nonce (a new one when it has none; ``ensure_csrf`` sets it)."""
    nonce = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "csrf_nonce", None)
    if not nonce:
        nonce = secrets.token_urlsafe(24)
        request.state.csrf_nonce = nonce
    return nonce


def csrf_token(request: Request) -> str:
    return _sign(services(request), csrf_nonce(request))


def ensure_csrf(request: Request, response: Response) -> None:
    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(CSRF_COOKIE, csrf_nonce(request), httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")


def check_csrf(request: Request, sent: object) -> None:
    nonce = request.cookies.get(CSRF_COOKIE)
    if not nonce or not isinstance(sent, str) or not hmac.compare_digest(
            sent, _sign(services(request), nonce)):
        raise PageForbidden("the form expired or came from another site; reload the page and "
                        "send it again", code="csrf_failed")


def safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a login to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _sign(svc: Services, nonce: str) -> str:
    return hmac.new(svc.signing_key.encode(), f"csrf|{nonce}".encode(),
                    hashlib.sha256).hexdigest()
