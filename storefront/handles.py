"""Public handles: every account's unique public name (a seller's on listings and at
/sellers/{handle}), chosen at sign-up or derived from the name or e-mail and de-duplicated.

Assigned by a ``before_insert`` hook on ``Account`` (storefront/models.py), so every way an
account is made (sign-up, the admin bootstrap, the demo seed, the CLI) gets one."""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import text

HANDLE = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,38}[a-z0-9])")  # 3-40 chars, no edge '-'
PATTERN = HANDLE.pattern
# Paths and words a handle could be mistaken for.
RESERVED = frozenset({"admin", "api", "account", "login", "logout", "signup", "seller",
                      "sellers", "static", "try", "models", "support", "aimarket", "root"})


def handle_base(name: str, email: str) -> str:
    """A handle from the display name (a-z, 0-9, '-'); never from the e-mail (a handle is
    public, the address is not): a name that is only the e-mail's local part, or none, gives
    ``member-`` and six random hex digits."""
    local = email.split("@")[0].lower()
    base = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:30].strip("-")
    if len(base) >= 3 and base not in RESERVED and (name or "").lower() != local:
        return base
    return f"member-{secrets.token_hex(3)}"


def is_valid(handle: str) -> bool:
    return HANDLE.fullmatch(handle) is not None and handle not in RESERVED


def free_handle(connection: Any, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever no account holds yet."""
    taken = {row[0] for row in connection.execute(
        text("SELECT handle FROM accounts WHERE handle = :b OR handle LIKE :p"),
        {"b": base, "p": base.replace("_", "\\_") + "-%"})}
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def assign(_mapper: Any, connection: Any, account: Any) -> None:
    """The ``before_insert`` hook: a derived, de-duplicated handle when none was chosen."""
    if not account.handle:
        account.handle = free_handle(connection, handle_base(account.name or "",
                                                             account.email or ""))
