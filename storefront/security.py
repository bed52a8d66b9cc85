"""Passwords (argon2 via pwdlib), access tokens (JWT) and API keys (prefix + SHA-256 hash)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

import jwt
from pwdlib import PasswordHash

from serving import Unauthorized

_hasher = PasswordHash.recommended()
# Verifying against this keeps an unknown e-mail as slow as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
KEY_PREFIX = "amk"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
    if hashed is None:
        _hasher.verify(password, _DUMMY_HASH)
        return False
    return _hasher.verify(password, hashed)


def issue_token(account_id: int, *, key: str, minutes: int, session: int = 0) -> str:
    """A signed access token; ``session`` is the account's session epoch (``ses``): a token
    of an older epoch is revoked (logout, password change, an admin's revocation)."""
    now = datetime.now(UTC)
    claims = {"sub": str(account_id), "iat": now, "exp": now + timedelta(minutes=minutes),
              "typ": "access", "ses": session}
    return jwt.encode(claims, key, algorithm="HS256")


def read_token(token: str, *, key: str) -> int:
    """The account id an access token was issued to; Unauthorized when invalid or expired."""
    return read_claims(token, key=key)[0]


def read_claims(token: str, *, key: str) -> tuple[int, int]:
    """(account id, session epoch) of a valid access token; Unauthorized when invalid or
    expired. Whether the epoch is still the account's is the caller's check (it has the
    account row): ``session_valid``."""
    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("access token expired; log in again", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc
    if claims.get("typ") != "access" or not isinstance(claims.get("ses", 0), int):
        raise Unauthorized("invalid access token", code="invalid_token")
    return int(claims["sub"]), int(claims.get("ses", 0))


def session_valid(epoch: int, account_epoch: int) -> bool:
    """Whether a token of session ``epoch`` is still good for an account at ``account_epoch``."""
    return epoch == account_epoch


def new_api_key() -> tuple[str, str, str]:
    """(full secret shown once, lookup prefix, stored hash)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}_{prefix}_{secret}", prefix, hash_secret(secret)


def hash_secret(secret: str) -> str:
    # API key secrets carry 256 random bits: a fast hash is the right tool (no brute force).
    return hashlib.sha256(secret.encode()).hexdigest()


def split_api_key(raw: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed API key, else None."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1], parts[2]


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
