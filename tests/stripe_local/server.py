"""A local HTTP server that speaks Stripe's wire format, for billing tests.

The official ``stripe`` SDK talks to it over real HTTP::

    with StripeLocal() as srv:
        client = stripe.StripeClient(
            srv.api_key,
            base_addresses={"api": srv.url, "connect": srv.url, "files": srv.url,
                            "meter_events": srv.url},
            max_network_retries=2,
        )

Stripe semantics kept: bearer auth, bracket-notation form bodies, idempotency keys (replay with
``Idempotent-Replayed: true``, 400 ``idempotency_error`` on different parameters, 409 while the
first request is still running), meter-event identifier uniqueness, one concurrent meter-event
call per (customer, meter), Connect transfers only to accounts with ``transfers`` active.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.stripe_local import _core, _meters
from tests.stripe_local._wire import (
    ApiError,
    Fault,
    IdemRecord,
    decode_form,
    fault_error,
    new_id,
    now,
)

try:  # the API version the installed SDK pins, for Event objects
    from stripe._api_version import _ApiVersion

    API_VERSION = _ApiVersion.CURRENT
except Exception:  # pragma: no cover - SDK missing
    API_VERSION = "2025-09-30.clover"

Handler = Callable[..., dict]

# (method, path regex, handler, run under the server lock)
_ROUTES: list[tuple[str, re.Pattern[str], Handler, bool]] = [
    (m, re.compile(f"^{p}$"), h, locked)
    for m, p, h, locked in [
        ("POST", "/v1/customers", _core.create_customer, True),
        ("GET", "/v1/customers", _core.list_customers, True),
        ("GET", r"/v1/customers/([^/]+)", _core.get_customer, True),
        ("POST", "/v1/products", _core.create_product, True),
        ("POST", "/v1/prices", _core.create_price, True),
        ("GET", "/v1/prices", _core.list_prices, True),
        ("GET", r"/v1/prices/([^/]+)", _core.get_price, True),
        ("POST", "/v1/billing/meters", _meters.create_meter, True),
        ("GET", "/v1/billing/meters", _meters.list_meters, True),
        ("GET", r"/v1/billing/meters/([^/]+)", _meters.get_meter, True),
        ("GET", r"/v1/billing/meters/([^/]+)/event_summaries", _meters.event_summaries, True),
        ("POST", "/v1/billing/meter_events", _meters.create_meter_event, False),
        ("POST", "/v1/checkout/sessions", _core.create_session, True),
        ("GET", r"/v1/checkout/sessions/([^/]+)", _core.get_session, True),
        ("POST", "/v1/accounts", _core.create_account, True),
        ("GET", r"/v1/accounts/([^/]+)", _core.get_account, True),
        ("POST", "/v1/account_links", _core.create_account_link, True),
        ("POST", "/v1/transfers", _core.create_transfer, True),
        ("GET", "/v1/transfers", _core.list_transfers, True),
        ("GET", r"/v1/transfers/([^/]+)", _core.get_transfer, True),
        ("POST", "/v2/billing/meter_event_session", _meters.create_v2_session, True),
        ("POST", "/v2/billing/meter_event_stream", _meters.v2_stream, True),
    ]
]

_STREAM_PATH = "/v2/billing/meter_event_stream"


class StripeLocal:
    """In-memory Stripe API on 127.0.0.1; see the module docstring."""

    def __init__(self, api_key: str = "sk_test_local") -> None:
        self.api_key = api_key
        self.meter_event_delay_s: float = 0.0
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        # state
        self.customers: dict[str, dict] = {}
        self.products: dict[str, dict] = {}
        self.prices: dict[str, dict] = {}
        self.meters: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}
        self.accounts: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.transfers: list[dict] = []
        self.meter_events: list[dict] = []  # accepted events only
        self.stream_rejected: list[dict] = []
        self.events: list[dict] = []  # Event objects made by the test controls
        self.concurrency_violations: list[dict] = []
        self.requests: list[tuple[str, str, str | None, int]] = []
        self._identifiers: set[str] = set()
        self._in_flight_meter: set[tuple[str, str]] = set()
        self._v2_tokens: dict[str, float] = {}
        self._idem: dict[tuple[str, str], IdemRecord] = {}
        self._faults: list[Fault] = []

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> StripeLocal:
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"srv": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="stripe-local", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> StripeLocal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls --------------------------------------------------------------------

    def _event(self, typ: str, obj: dict) -> dict:
        evt = {"id": new_id("evt_"), "object": "event", "type": typ, "created": now(),
               "api_version": API_VERSION, "livemode": False, "pending_webhooks": 1,
               "request": {"id": None, "idempotency_key": None},
               "data": {"object": json.loads(json.dumps(obj))}}
        self.events.append(evt)
        return evt

    def complete_checkout(self, session_id: str) -> dict:
        """Pay/complete a Checkout Session; answer its ``checkout.session.completed`` Event."""
        with self._lock:
            sess = self.sessions.get(session_id)
            if sess is None:
                raise KeyError(f"No such checkout.session: {session_id}")
            if sess["status"] != "open":
                raise ValueError(f"checkout.session {session_id} is {sess['status']}")
            if sess["customer"] is None and sess["mode"] != "payment":
                cus = _core.create_customer(self, {"email": sess.get("customer_email") or ""})
                sess["customer"] = cus["id"]
            sess["status"] = "complete"
            if sess["mode"] == "payment":
                sess["payment_status"] = "paid"
                sess["payment_intent"] = new_id("pi_")
            elif sess["mode"] == "setup":
                sess["payment_status"] = "no_payment_required"
                sess["setup_intent"] = new_id("seti_")
            else:
                sess["payment_status"] = "paid"
                sess["subscription"] = self._subscribe(sess)["id"]
                sess["invoice"] = new_id("in_")
            return self._event("checkout.session.completed", _core._public_session(sess))

    def _subscribe(self, sess: dict) -> dict:
        sid = new_id("sub_")
        t = now()
        items = [{"id": new_id("si_"), "object": "subscription_item", "created": t,
                  "price": li["price"], "quantity": li["quantity"], "subscription": sid,
                  "metadata": {}, "current_period_start": t,
                  "current_period_end": t + 30 * 86400}
                 for li in sess["line_items"]["data"] if li["price"]["recurring"]]
        sub = {"id": sid, "object": "subscription", "created": t, "livemode": False,
               "customer": sess["customer"], "status": "active", "metadata": {},
               "currency": sess["currency"], "start_date": t, "cancel_at_period_end": False,
               "items": {"object": "list", "data": items, "has_more": False,
                         "url": f"/v1/subscription_items?subscription={sid}"}}
        self.subscriptions[sid] = sub
        return sub

    def complete_onboarding(self, account_id: str) -> dict:
        """Finish Connect onboarding; answer its ``account.updated`` Event."""
        with self._lock:
            acct = self.accounts.get(account_id)
            if acct is None:
                raise KeyError(f"No such account: {account_id}")
            acct.update(details_submitted=True, payouts_enabled=True, charges_enabled=True,
                        requirements={"currently_due": [], "disabled_reason": None})
            acct["capabilities"]["transfers"] = "active"
            return self._event("account.updated", acct)

    @staticmethod
    def sign(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header value for ``payload`` under ``secret``."""
        t = int(time.time()) if timestamp is None else int(timestamp)
        body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        mac = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
        return f"t={t},v1={mac}"

    def fail_next(self, path_prefix: str, status: int = 500, count: int = 1,
                  after_processing: bool = False, method: str | None = None) -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status``.

        ``after_processing=True`` processes the request first (side effects and idempotency
        record kept as the real answer) and then sends the error instead: a lost reply.
        """
        with self._lock:
            self._faults.append(Fault(path_prefix, status, count, after_processing,
                                      method.upper() if method else None))

    def clear_faults(self) -> None:
        """Forget every failure still queued by ``fail_next``."""
        with self._lock:
            self._faults.clear()

    def count(self, path_prefix: str, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, _, _ in self.requests
                       if p.startswith(path_prefix) and (method is None or m == method.upper()))

    def meter_totals(self, event_name: str) -> dict[str, int]:
        """Sum of accepted meter-event values per customer for ``event_name``."""
        out: dict[str, int] = {}
        with self._lock:
            for e in self.meter_events:
                if e["event_name"] == event_name:
                    out[e["customer"]] = out.get(e["customer"], 0) + e["value"]
        return out

    # --- request pipeline -----------------------------------------------------------------

    def _take_fault(self, path: str, method: str = "") -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.count > 0 and path.startswith(f.prefix) and f.method in (None, method):
                    f.count -= 1
                    if f.count == 0:
                        self._faults.remove(f)
                    return f
        return None

    def _auth(self, path: str, headers: Any) -> str:
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if path == _STREAM_PATH:
            with self._lock:
                exp = self._v2_tokens.get(token)
            if exp is None or exp < time.time():
                raise ApiError(401, "The meter event session authentication token is invalid "
                               "or has expired.", code="billing_meter_event_session_expired",
                               store=False)
            return f"session:{token}"
        if not token:
            raise ApiError(401, "You did not provide an API key. You need to provide your API "
                           "key in the Authorization header, using Bearer auth.", store=False)
        if token != self.api_key:
            shown = token[:8] + "*" * max(0, len(token) - 12) + token[-4:]
            raise ApiError(401, f"Invalid API Key provided: {shown}", store=False)
        return token

    def _params(self, method: str, path: str, query: str, headers: Any, body: bytes) -> dict:
        if path.startswith("/v2/"):
            if method == "GET":
                return decode_form(query)
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                raise ApiError(400, "Invalid JSON body.", store=False) from None
            if not isinstance(parsed, dict):
                raise ApiError(400, "Request body must be a JSON object.", store=False)
            return parsed
        raw = body.decode("utf-8") if method == "POST" else query
        if method == "POST" and query:
            raw = f"{query}&{raw}" if raw else query
        return decode_form(raw)

    def handle(self, method: str, target: str, headers: Any, body: bytes):
        """Process one request; answer (status, body dict, extra headers)."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        idem_key = headers.get("Idempotency-Key") if method == "POST" else None
        status, resp, extra = self._dispatch(method, path, parts.query, headers, body, idem_key)
        with self._lock:
            self.requests.append((method, path, idem_key, status))
        return status, resp, extra

    def _dispatch(self, method, path, query, headers, body, idem_key):
        try:
            scope = self._auth(path, headers)
            route = next(((h, m.groups(), locked) for meth, rx, h, locked in _ROUTES
                          if meth == method and (m := rx.match(path))), None)
            if route is None:
                raise ApiError(404, f"Unrecognized request URL ({method}: {path}). Please see "
                               "https://stripe.com/docs or we can help at "
                               "https://support.stripe.com/.")
            params = self._params(method, path, query, headers, body)
        except ApiError as e:
            return e.status, e.body(), e.headers
        fault = self._take_fault(path, method)
        if fault is not None and not fault.after_processing:
            e = fault_error(fault.status)
            return e.status, e.body(), {}
        status, resp, extra = self._run(method, path, params, route, scope, idem_key)
        if fault is not None:
            e = fault_error(fault.status)
            return e.status, e.body(), {}
        return status, resp, extra

    def _run(self, method, path, params, route, scope, idem_key):
        handler, groups, locked = route
        extra: dict[str, str] = {}
        rec_key = (scope, idem_key) if idem_key else None
        if rec_key is not None:
            extra["Idempotency-Key"] = idem_key
            with self._lock:
                rec = self._idem.get(rec_key)
                if rec is None:
                    self._idem[rec_key] = IdemRecord(method, path, params)
                elif rec.in_flight:
                    e = ApiError(409, "There is currently another in-progress request using "
                                 f"this Idempotent Key (that probably means you submitted "
                                 f"twice, and the other request is still going through): "
                                 f"{idem_key}. Please try again later.",
                                 type="idempotency_error", code="idempotency_key_in_use")
                    return e.status, e.body(), extra
                elif rec.method != method or rec.path != path:
                    e = ApiError(400, "Keys for idempotent requests can only be used for the "
                                 "same endpoint they were first used for. Try using a key "
                                 f"other than '{idem_key}' if you meant to execute a "
                                 "different request.", type="idempotency_error")
                    return e.status, e.body(), extra
                elif rec.params != params:
                    e = ApiError(400, "Keys for idempotent requests can only be used with the "
                                 "same parameters they were first used with. Try using a key "
                                 f"other than '{idem_key}' if you meant to execute a "
                                 "different request.", type="idempotency_error")
                    return e.status, e.body(), extra
                else:
                    extra.update({"Idempotent-Replayed": "true",
                                  "Original-Request": rec.request_id})
                    return rec.status, rec.body, extra
        store = True
        try:
            if locked:
                with self._lock:
                    status, resp = 200, handler(self, params, *groups)
            else:
                status, resp = 200, handler(self, params, *groups)
        except ApiError as e:
            status, resp, store = e.status, e.body(), e.store
            extra.update(e.headers)
        except Exception as e:  # a bug here must still look like Stripe
            status, store = 500, False
            resp = ApiError(500, f"StripeLocal internal error: {e!r}", type="api_error").body()
        if rec_key is not None:
            with self._lock:
                if store:
                    rec = self._idem[rec_key]
                    rec.status, rec.body, rec.in_flight = status, resp, False
                    rec.request_id = extra.setdefault("Request-Id", new_id("req_", 14))
                else:
                    self._idem.pop(rec_key, None)
        return status, resp, extra


class _Handler(BaseHTTPRequestHandler):
    srv: StripeLocal
    protocol_version = "HTTP/1.1"
    server_version = "stripe-local"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, resp, extra = self.srv.handle(method, self.path, self.headers, body)
        data = json.dumps(resp).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", extra.pop("Request-Id", None) or new_id("req_", 14))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")
