"""Stripe wire-format helpers: bracket-notation form decoding, ids, errors, list objects."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking object id such as ``cus_Q8s...``."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


class ApiError(Exception):
    """An error answer in Stripe's shape.

    ``store`` says whether the idempotency layer keeps this answer for replay. Stripe saves the
    result once an endpoint began executing; parameter validation failures and concurrency
    conflicts are not saved.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - Stripe's field name
        code: str | None = None,
        param: str | None = None,
        store: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.store = store
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}


def missing(param: str) -> ApiError:
    return ApiError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param,
        store=False,
    )


def invalid(param: str, message: str, code: str = "parameter_invalid_string") -> ApiError:
    return ApiError(400, message, code=code, param=param, store=False)


def no_such(kind: str, oid: str, param: str, status: int = 400) -> ApiError:
    return ApiError(status, f"No such {kind}: '{oid}'", code="resource_missing", param=param)


def unknown_param(param: str) -> ApiError:
    return ApiError(
        400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param,
        store=False,
    )


def decode_form(raw: str) -> dict[str, Any]:
    """Decode ``a[b][0][c]=v`` bracket notation into nested dicts and lists.

    Dicts whose keys are all decimal indices become lists ordered by index; ``a[]=v`` appends.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, strict_parsing=False):
        m = _KEY_RE.match(key)
        if not m:
            raise ApiError(400, f"Invalid parameter name: {key}", code="parameter_invalid_string",
                           param=key, store=False)
        parts = [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ApiError(400, f"Invalid parameter: {key}", param=key, store=False,
                                   code="parameter_invalid_string")
                node = child
    return _listify(root)


_MAPS = {"metadata", "payload"}  # free-form string maps: digit keys stay keys


def _listify(node: Any, is_map: bool = False) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v, k in _MAPS) for k, v in node.items()}
    if out and not is_map and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


def list_obj(url: str, data: list[dict[str, Any]], limit: int | None = None) -> dict[str, Any]:
    has_more = False
    if limit is not None and len(data) > limit:
        data, has_more = data[:limit], True
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


# --- typed parameter readers -------------------------------------------------------------


def req_str(params: dict[str, Any], name: str) -> str:
    v = params.get(name)
    if v is None or v == "":
        raise missing(name)
    if not isinstance(v, str):
        raise invalid(name, f"Invalid string: {v!r}")
    return v


def opt_str(params: dict[str, Any], name: str) -> str | None:
    v = params.get(name)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise invalid(name, f"Invalid string: {v!r}")
    return v


def to_int(value: Any, param: str, *, positive: bool = False, nonneg: bool = False) -> int:
    if isinstance(value, bool):
        raise invalid(param, f"Invalid integer: {value}", "parameter_invalid_integer")
    try:
        n = int(value) if isinstance(value, int) else int(str(value), 10)
    except (TypeError, ValueError):
        raise invalid(param, f"Invalid integer: {value}", "parameter_invalid_integer") from None
    if positive and n <= 0:
        raise invalid(param, "Invalid positive integer", "parameter_invalid_integer")
    if nonneg and n < 0:
        raise invalid(param, "This value must be greater than or equal to 0.",
                      "parameter_invalid_integer")
    return n


def opt_int(params: dict[str, Any], name: str, **kw: bool) -> int | None:
    v = params.get(name)
    if v is None or v == "":
        return None
    return to_int(v, name, **kw)


def to_bool(value: Any, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise invalid(param, f"Invalid boolean: {value}", "parameter_invalid_boolean")


def metadata(params: dict[str, Any], old: dict[str, str] | None = None) -> dict[str, str]:
    md = dict(old or {})
    raw = params.get("metadata")
    if raw is None or raw == "":
        return md
    if not isinstance(raw, dict):
        raise invalid("metadata", "Invalid hash")
    for k, v in raw.items():
        if v == "" or v is None:
            md.pop(k, None)
        else:
            md[k] = str(v)
    return md


def check_known(params: dict[str, Any], allowed: set[str]) -> None:
    for k in params:
        if k not in allowed and k != "expand":
            raise unknown_param(k)


# --- server bookkeeping ------------------------------------------------------------------


@dataclass
class Fault:
    prefix: str
    status: int
    count: int
    after_processing: bool
    method: str | None = None


@dataclass
class IdemRecord:
    method: str
    path: str
    params: Any
    status: int = 0
    body: dict | None = None
    request_id: str = ""
    in_flight: bool = True


def fault_error(status: int) -> ApiError:
    if status == 429:
        return ApiError(429, "Request rate limit exceeded.", code="rate_limit")
    if status == 409:
        return ApiError(409, "This object cannot be accessed right now because another API "
                        "request or Stripe process is currently accessing it.",
                        code="lock_timeout")
    if status == 402:
        return ApiError(402, "Your card was declined.", type="card_error", code="card_declined")
    if status >= 500:
        return ApiError(status, "An unknown error occurred (injected by StripeLocal).",
                        type="api_error")
    return ApiError(status, "Injected error (StripeLocal).")
