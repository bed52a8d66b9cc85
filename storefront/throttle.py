"""Who is calling (the client address) and the throttles of logins, sign-ups and demo use.

The client address is computed in one place, ``client_address``: the TCP peer, unless the peer
is one of ``AIMARKET_TRUSTED_PROXIES``; then ``X-Forwarded-For`` is read from the right,
skipping trusted proxies, and the first other address is the client. A client that is not a
trusted proxy cannot choose its address by sending the header.

The throttles are GCRA buckets in Redis (``Meter.throttle``), never on the paid call. Failed
logins are counted per address *and* e-mail (so an attacker's address being throttled never
stops the real user logging in from theirs) and per address (spraying many e-mails); a
throttled login answers 429 with Retry-After, even for the right password, until the bucket
refills. Sign-ups and demo calls are counted per address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Mapping
from functools import lru_cache

from serving import TooManyRequests

from .services import Services

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(setting: str) -> tuple[Network, ...]:
    """The parsed ``AIMARKET_TRUSTED_PROXIES`` (addresses or CIDRs, comma-separated)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in setting.split(",") if part.strip())


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, headers: Mapping[str, str], trusted: str) -> str:
    """The client's address: the peer, or what trusted proxies say in X-Forwarded-For."""
    address = peer or "unknown"
    networks = trusted_networks(trusted)
    if not networks or not _trusted(address, networks):
        return address
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
        address = hop
    return address


def request_address(request: object, svc: Services) -> str:
    """``client_address`` of a Starlette or Gradio request (``.client``, ``.headers``)."""
    client = getattr(request, "client", None)
    headers = getattr(request, "headers", None) or {}
    return client_address(getattr(client, "host", None), headers,
                          svc.settings.trusted_proxies)


def _who(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _refuse(message: str, code: str, wait_ms: int) -> TooManyRequests:
    seconds = max(1, math.ceil(wait_ms / 1000))
    return TooManyRequests(f"{message}; try again in {seconds} s", code=code,
                           headers={"Retry-After": str(seconds)})


def _login_buckets(svc: Services, address: str, email: str) -> list[tuple[str, float, int]]:
    s, names = svc.settings, svc.meter.names
    return [(names.throttle("login", _who(address, email.lower())),
             s.login_failures_per_minute / 60, s.login_failures_burst),
            (names.throttle("login-addr", _who(address)),
             s.login_address_failures_per_minute / 60, s.login_address_failures_burst)]


async def check_login(svc: Services, address: str, email: str) -> None:
    """Before checking a password: TooManyRequests while this address failed too often."""
    for key, rps, burst in _login_buckets(svc, address, email):
        ok, wait = await svc.meter.throttle(key, rps, burst, cost=0)
        if not ok:
            raise _refuse("too many failed logins from this address", "too_many_logins", wait)


async def login_failed(svc: Services, address: str, email: str) -> None:
    """Count one failed login of ``address`` for ``email``."""
    for key, rps, burst in _login_buckets(svc, address, email):
        await svc.meter.throttle(key, rps, burst)


async def check_signup(svc: Services, address: str) -> None:
    s = svc.settings
    ok, wait = await svc.meter.throttle(svc.meter.names.throttle("signup", _who(address)),
                                        s.signups_per_hour / 3600, s.signup_burst)
    if not ok:
        raise _refuse("too many sign-ups from this address", "too_many_signups", wait)


async def check_demo(svc: Services, address: str) -> None:
    s = svc.settings
    ok, wait = await svc.meter.throttle(svc.meter.names.throttle("demo", _who(address)),
                                        s.demo_calls_per_minute / 60, s.demo_burst)
    if not ok:
        raise _refuse("too many demo calls from this address", "demo_throttled", wait)
