"""Billing meters, meter events (v1 and the v2 stream) and event summaries."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from tests.stripe_local._wire import (
    ApiError,
    check_known,
    invalid,
    list_obj,
    missing,
    new_id,
    no_such,
    now,
    opt_str,
    req_str,
    to_int,
)

if TYPE_CHECKING:
    from tests.stripe_local.server import StripeLocal

Params = dict[str, Any]
PAST_LIMIT_S = 35 * 86400
FUTURE_LIMIT_S = 5 * 60
SESSION_TTL_S = 15 * 60


def create_meter(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"display_name", "event_name", "default_aggregation", "customer_mapping",
                    "value_settings", "event_time_window"})
    display_name = req_str(p, "display_name")
    event_name = req_str(p, "event_name")
    agg = p.get("default_aggregation")
    if not isinstance(agg, dict) or not agg.get("formula"):
        raise missing("default_aggregation[formula]")
    if agg["formula"] not in ("sum", "count", "last"):
        raise invalid("default_aggregation[formula]",
                      "Invalid default_aggregation[formula]: must be one of count, last, or sum")
    cm = p.get("customer_mapping") or {}
    if not isinstance(cm, dict):
        raise invalid("customer_mapping", "Invalid hash")
    if cm and cm.get("type", "by_id") != "by_id":
        raise invalid("customer_mapping[type]", "Invalid customer_mapping[type]: must be by_id")
    if cm and not cm.get("event_payload_key"):
        raise missing("customer_mapping[event_payload_key]")
    vs = p.get("value_settings") or {}
    if not isinstance(vs, dict):
        raise invalid("value_settings", "Invalid hash")
    if any(m["event_name"] == event_name and m["status"] == "active"
           for m in srv.meters.values()):
        raise ApiError(400, f"A meter with event_name `{event_name}` already exists.",
                       param="event_name")
    t = now()
    meter = {
        "id": new_id("mtr_test_", 24), "object": "billing.meter", "created": t,
        "updated": t, "livemode": False, "display_name": display_name,
        "event_name": event_name, "event_time_window": p.get("event_time_window"),
        "status": "active", "status_transitions": {"deactivated_at": None},
        "default_aggregation": {"formula": agg["formula"]},
        "customer_mapping": {"event_payload_key": cm.get("event_payload_key",
                                                         "stripe_customer_id"),
                             "type": "by_id"},
        "value_settings": {"event_payload_key": vs.get("event_payload_key", "value")},
    }
    srv.meters[meter["id"]] = meter
    return meter


def get_meter(srv: StripeLocal, p: Params, mid: str) -> dict:
    meter = srv.meters.get(mid)
    if meter is None:
        raise no_such("billing.meter", mid, "id", 404)
    return meter


def list_meters(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"status", "limit", "starting_after", "ending_before"})
    data = list(reversed(srv.meters.values()))
    status = opt_str(p, "status")
    if status is not None:
        if status not in ("active", "inactive"):
            raise invalid("status", "Invalid status: must be one of active or inactive")
        data = [m for m in data if m["status"] == status]
    limit = to_int(p.get("limit") or 10, "limit", positive=True)
    return list_obj("/v1/billing/meters", data, limit)


def _active_meter(srv: StripeLocal, event_name: str) -> dict | None:
    return next((m for m in srv.meters.values()
                 if m["event_name"] == event_name and m["status"] == "active"), None)


def _validate_event(srv: StripeLocal, p: Params, ts_param: str = "timestamp"):
    """Check one meter event; answer (meter, customer_id, value, timestamp, identifier)."""
    event_name = req_str(p, "event_name")
    payload = p.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise missing("payload")
    meter = _active_meter(srv, event_name)
    if meter is None:
        raise ApiError(400, f"No active meter was found with event_name `{event_name}`.",
                       param="event_name", code="resource_missing")
    ckey = meter["customer_mapping"]["event_payload_key"]
    vkey = meter["value_settings"]["event_payload_key"]
    cid = payload.get(ckey)
    if cid in (None, ""):
        raise missing(f"payload[{ckey}]")
    if cid not in srv.customers:
        raise no_such("customer", str(cid), f"payload[{ckey}]", 400)
    raw = payload.get(vkey)
    if meter["default_aggregation"]["formula"] == "count" and raw in (None, ""):
        raw = "1"
    if raw in (None, ""):
        raise missing(f"payload[{vkey}]")
    if not re.fullmatch(r"\d+", str(raw)):
        raise invalid(f"payload[{vkey}]", f"Invalid value `{raw}`: the value must be a "
                      "non-negative integer.", "parameter_invalid_integer")
    value = int(str(raw))
    ts = p.get("timestamp")
    t_now = now()
    if ts in (None, ""):
        ts = t_now
    elif isinstance(ts, str) and "T" in ts:
        ts = int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
    else:
        ts = to_int(ts, ts_param)
    if ts < t_now - PAST_LIMIT_S:
        raise ApiError(400, "Timestamp must be within the past 35 calendar days.",
                       param=ts_param, code="timestamp_too_far_in_past", store=False)
    if ts > t_now + FUTURE_LIMIT_S:
        raise ApiError(400, "Timestamp must not be more than 5 minutes in the future.",
                       param=ts_param, code="timestamp_in_future", store=False)
    ident = opt_str(p, "identifier") or new_id("", 32)
    return meter, cid, value, ts, ident, dict(payload)


def _record(srv: StripeLocal, meter: dict, cid: str, value: int, ts: int, ident: str,
            source: str) -> bool:
    """Store an accepted event unless its identifier was seen (caller holds the lock)."""
    if ident in srv._identifiers:
        return False
    srv._identifiers.add(ident)
    srv.meter_events.append({"identifier": ident, "event_name": meter["event_name"],
                             "meter": meter["id"], "customer": cid, "value": value,
                             "timestamp": ts, "created": now(), "source": source})
    return True


def create_meter_event(srv: StripeLocal, p: Params) -> dict:
    """POST /v1/billing/meter_events. Runs WITHOUT the server lock held."""
    check_known(p, {"event_name", "payload", "identifier", "timestamp"})
    with srv._lock:
        meter, cid, value, ts, ident, payload = _validate_event(srv, p)
        slot = (cid, meter["id"])
        if slot in srv._in_flight_meter:
            srv.concurrency_violations.append(
                {"customer": cid, "meter": meter["id"], "event_name": meter["event_name"],
                 "identifier": ident, "at": time.time()})
            raise ApiError(429, "Too many concurrent requests for this customer and meter. "
                           "Only one meter event call per customer and meter may be in "
                           "flight at a time.", code="rate_limit", store=False)
        srv._in_flight_meter.add(slot)
    try:
        delay = srv.meter_event_delay_s
        if delay > 0:
            time.sleep(delay)
        with srv._lock:
            if not _record(srv, meter, cid, value, ts, ident, "v1"):
                raise ApiError(400, f"An event already exists with identifier {ident}.",
                               param="identifier")
    finally:
        with srv._lock:
            srv._in_flight_meter.discard(slot)
    return {"object": "billing.meter_event", "created": now(), "event_name": p["event_name"],
            "identifier": ident, "livemode": False, "payload": payload, "timestamp": ts}


def event_summaries(srv: StripeLocal, p: Params, mid: str) -> dict:
    check_known(p, {"customer", "start_time", "end_time", "value_grouping_window", "limit",
                    "starting_after", "ending_before"})
    meter = get_meter(srv, p, mid)
    cid = req_str(p, "customer")
    if p.get("start_time") in (None, ""):
        raise missing("start_time")
    if p.get("end_time") in (None, ""):
        raise missing("end_time")
    start = to_int(p["start_time"], "start_time")
    end = to_int(p["end_time"], "end_time")
    for name, v in (("start_time", start), ("end_time", end)):
        if v % 60:
            raise invalid(name, f"{name} must be aligned with minute boundaries.",
                          "parameter_invalid_integer")
    if end <= start:
        raise invalid("end_time", "end_time must be greater than start_time.",
                      "parameter_invalid_integer")
    window = opt_str(p, "value_grouping_window")
    step = {None: end - start, "hour": 3600, "day": 86400}.get(window)
    if step is None:
        raise invalid("value_grouping_window",
                      "Invalid value_grouping_window: must be one of day or hour")
    if window and (start % step or end % step):
        raise invalid("start_time", f"start_time and end_time must align with {window} "
                      "boundaries.", "parameter_invalid_integer")
    events = [e for e in srv.meter_events if e["meter"] == meter["id"] and e["customer"] == cid]
    formula = meter["default_aggregation"]["formula"]
    out = []
    for ws in range(start, end, step):
        we = min(ws + step, end)
        inside = sorted((e for e in events if ws <= e["timestamp"] < we),
                        key=lambda e: (e["timestamp"], e["created"]))
        if formula == "count":
            agg: float = len(inside)
        elif formula == "last":
            agg = inside[-1]["value"] if inside else 0
        else:
            agg = sum(e["value"] for e in inside)
        out.append({"id": new_id("mtrusg_"), "object": "billing.meter_event_summary",
                    "aggregated_value": agg, "start_time": ws, "end_time": we,
                    "livemode": False, "meter": meter["id"]})
    out.reverse()  # Stripe lists summaries newest first
    limit = to_int(p.get("limit") or 10, "limit", positive=True)
    return list_obj(f"/v1/billing/meters/{mid}/event_summaries", out, limit)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def create_v2_session(srv: StripeLocal, p: Params) -> dict:
    token = "mes_tok_" + secrets.token_hex(24)
    t = time.time()
    srv._v2_tokens[token] = t + SESSION_TTL_S
    return {"id": new_id("mes_"), "object": "v2.billing.meter_event_session",
            "authentication_token": token, "created": _iso(t),
            "expires_at": _iso(t + SESSION_TTL_S), "livemode": False}


def v2_stream(srv: StripeLocal, p: Params) -> dict:
    """POST /v2/billing/meter_event_stream: validation is asynchronous at Stripe, so events
    that fail it are dropped (kept in ``srv.stream_rejected``) instead of failing the call."""
    events = p.get("events")
    if not isinstance(events, list) or not events:
        raise missing("events")
    if len(events) > 100:
        raise invalid("events", "At most 100 events may be sent in one request.")
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise invalid(f"events[{i}]", "Invalid object")
        if not ev.get("event_name"):
            raise missing(f"events[{i}].event_name")
        if not isinstance(ev.get("payload"), dict):
            raise missing(f"events[{i}].payload")
    for ev in events:
        try:
            meter, cid, value, ts, ident, _ = _validate_event(srv, ev)
        except ApiError as e:
            srv.stream_rejected.append({"event": ev, "error": e.body()["error"]})
            continue
        if not _record(srv, meter, cid, value, ts, ident, "v2"):
            srv.stream_rejected.append({"event": ev, "error": {
                "type": "invalid_request_error",
                "message": f"An event already exists with identifier {ident}."}})
    return {}
