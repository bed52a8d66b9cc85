"""Customers, products, prices, checkout sessions, Connect accounts and transfers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from tests.stripe_local._wire import (
    ApiError,
    check_known,
    invalid,
    list_obj,
    metadata,
    missing,
    new_id,
    no_such,
    now,
    opt_int,
    opt_str,
    req_str,
    to_bool,
    to_int,
)

if TYPE_CHECKING:
    from tests.stripe_local.server import StripeLocal

Params = dict[str, Any]


def _base(prefix: str, obj: str, params: Params) -> dict[str, Any]:
    return {"id": new_id(prefix), "object": obj, "created": now(), "livemode": False,
            "metadata": metadata(params)}


def _get(table: dict[str, dict], oid: str, kind: str, param: str = "id", status: int = 404):
    obj = table.get(oid)
    if obj is None:
        raise no_such(kind, oid, param, status)
    return obj


# --- customers ----------------------------------------------------------------------------

def create_customer(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"email", "name", "metadata", "description", "phone", "address",
                    "preferred_locales", "tax_exempt", "invoice_settings"})
    cus = _base("cus_", "customer", p)
    cus.update(email=opt_str(p, "email"), name=opt_str(p, "name"),
               description=opt_str(p, "description"), phone=opt_str(p, "phone"),
               balance=0, currency=None, delinquent=False, invoice_prefix=new_id("", 8).upper())
    srv.customers[cus["id"]] = cus
    return cus


def get_customer(srv: StripeLocal, p: Params, cid: str) -> dict:
    return _get(srv.customers, cid, "customer")


def list_customers(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"email", "limit", "starting_after", "ending_before", "created",
                    "test_clock"})
    data = list(reversed(srv.customers.values()))
    if p.get("email"):
        data = [c for c in data if c["email"] == p["email"]]
    return list_obj("/v1/customers", data, opt_int(p, "limit", positive=True) or 10)


# --- products and prices ------------------------------------------------------------------

def create_product(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"name", "metadata", "description", "active", "id", "tax_code",
                    "unit_label", "url", "images"})
    prod = _base("prod_", "product", p)
    if opt_str(p, "id"):
        if p["id"] in srv.products:
            raise ApiError(400, f"Product already exists with id {p['id']}.",
                           code="resource_already_exists", param="id")
        prod["id"] = p["id"]
    prod.update(name=req_str(p, "name"), description=opt_str(p, "description"),
                active=to_bool(p.get("active", True), "active"), type="service",
                default_price=None, unit_label=opt_str(p, "unit_label"))
    srv.products[prod["id"]] = prod
    return prod


def _unit_amount(p: Params, prefix: str) -> tuple[int | None, str]:
    ua, uad = p.get("unit_amount"), p.get("unit_amount_decimal")
    if ua not in (None, "") and uad not in (None, ""):
        raise invalid(f"{prefix}unit_amount_decimal",
                      "You may only specify one of these parameters: unit_amount, "
                      "unit_amount_decimal.", "parameter_invalid_string")
    if ua not in (None, ""):
        n = to_int(ua, f"{prefix}unit_amount", nonneg=True)
        return n, str(n)
    if uad in (None, ""):
        raise missing(f"{prefix}unit_amount")
    param = f"{prefix}unit_amount_decimal"
    if not isinstance(uad, str) or not re.fullmatch(r"\d+(\.\d{1,12})?", uad):
        raise invalid(param, f"Invalid decimal: {uad}. Must be a non-negative decimal with at "
                      "most 12 decimal places.", "parameter_invalid_string")
    try:
        d = Decimal(uad)
    except InvalidOperation:
        raise invalid(param, f"Invalid decimal: {uad}") from None
    whole = int(d) if d == d.to_integral_value() else None
    return whole, format(d.normalize(), "f")


def _recurring(srv: StripeLocal, raw: Any, prefix: str) -> dict | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, dict):
        raise invalid(f"{prefix}recurring", "Invalid hash")
    interval = raw.get("interval")
    if not interval:
        raise missing(f"{prefix}recurring[interval]")
    if interval not in ("day", "week", "month", "year"):
        raise invalid(f"{prefix}recurring[interval]",
                      "Invalid recurring[interval]: must be one of day, week, month, or year")
    usage = raw.get("usage_type", "licensed")
    if usage not in ("licensed", "metered"):
        raise invalid(f"{prefix}recurring[usage_type]",
                      "Invalid recurring[usage_type]: must be one of licensed or metered")
    meter = raw.get("meter") or None
    if usage == "metered" and meter is None:
        raise missing(f"{prefix}recurring[meter]")
    if meter is not None and meter not in srv.meters:
        raise no_such("billing.meter", meter, f"{prefix}recurring[meter]", 400)
    return {"interval": interval,
            "interval_count": to_int(raw.get("interval_count", 1), "recurring[interval_count]",
                                     positive=True),
            "usage_type": usage, "meter": meter, "aggregate_usage": None,
            "trial_period_days": None}


def _build_price(srv: StripeLocal, p: Params, prefix: str = "") -> dict:
    currency = req_str(p, "currency").lower() if not prefix else p.get("currency")
    if prefix and not currency:
        raise missing(f"{prefix}currency")
    product = p.get("product")
    if product in (None, "") and isinstance(p.get("product_data"), dict):
        pd = p["product_data"]
        if not pd.get("name"):
            raise missing(f"{prefix}product_data[name]")
        product = create_product(srv, {"name": pd["name"],
                                       "metadata": pd.get("metadata") or {}})["id"]
    if product in (None, ""):
        raise missing(f"{prefix}product")
    if product not in srv.products:
        raise no_such("product", product, f"{prefix}product", 400)
    unit_amount, unit_amount_decimal = _unit_amount(p, prefix)
    recurring = _recurring(srv, p.get("recurring"), prefix)
    price = _base("price_", "price", p)
    price.update(active=to_bool(p.get("active", True), "active"), currency=currency.lower(),
                 product=product, unit_amount=unit_amount,
                 unit_amount_decimal=unit_amount_decimal, recurring=recurring,
                 type="recurring" if recurring else "one_time", billing_scheme="per_unit",
                 lookup_key=opt_str(p, "lookup_key"), nickname=opt_str(p, "nickname"),
                 tax_behavior=p.get("tax_behavior", "unspecified"), tiers_mode=None,
                 transform_quantity=None)
    return price


def create_price(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"currency", "product", "product_data", "unit_amount", "unit_amount_decimal",
                    "recurring", "lookup_key", "transfer_lookup_key", "metadata", "active",
                    "nickname", "tax_behavior", "billing_scheme"})
    price = _build_price(srv, p)
    lk = price["lookup_key"]
    if lk:
        holder = next((x for x in srv.prices.values() if x["lookup_key"] == lk), None)
        if holder is not None:
            if not to_bool(p.get("transfer_lookup_key", "false"), "transfer_lookup_key"):
                raise ApiError(400, f"A price (`{holder['id']}`) already uses that lookup key.",
                               param="lookup_key")
            holder["lookup_key"] = None
    srv.prices[price["id"]] = price
    return price


def get_price(srv: StripeLocal, p: Params, pid: str) -> dict:
    return _get(srv.prices, pid, "price")


def list_prices(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"lookup_keys", "active", "product", "currency", "type", "limit",
                    "starting_after", "ending_before", "recurring", "created"})
    data = list(reversed(srv.prices.values()))
    if p.get("lookup_keys") not in (None, ""):
        keys = p["lookup_keys"]
        if not isinstance(keys, list):
            raise invalid("lookup_keys", "Invalid array")
        data = [x for x in data if x["lookup_key"] in keys]
    if p.get("active") not in (None, ""):
        active = to_bool(p["active"], "active")
        data = [x for x in data if x["active"] == active]
    for f in ("product", "currency", "type"):
        if p.get(f):
            data = [x for x in data if x[f] == p[f]]
    return list_obj("/v1/prices", data, opt_int(p, "limit", positive=True) or 10)


# --- checkout -----------------------------------------------------------------------------

_SESSION_PARAMS = {
    "mode", "customer", "customer_email", "line_items", "success_url", "cancel_url",
    "client_reference_id", "metadata", "payment_method_types", "subscription_data",
    "payment_intent_data", "allow_promotion_codes", "billing_address_collection",
    "customer_creation", "expires_at", "currency", "locale", "ui_mode", "return_url",
    "automatic_tax", "invoice_creation", "setup_intent_data", "consent_collection",
    "submit_type", "tax_id_collection", "customer_update", "discounts",
    "phone_number_collection", "payment_method_collection", "saved_payment_method_options",
}


def create_session(srv: StripeLocal, p: Params) -> dict:
    check_known(p, _SESSION_PARAMS)
    mode = req_str(p, "mode")
    if mode not in ("payment", "subscription", "setup"):
        raise invalid("mode", "Invalid mode: must be one of payment, setup, or subscription",
                      "parameter_invalid_string")
    customer = opt_str(p, "customer")
    if customer and customer not in srv.customers:
        raise no_such("customer", customer, "customer", 400)
    raw_items = p.get("line_items") or []
    if not isinstance(raw_items, list):
        raise invalid("line_items", "Invalid array")
    if mode != "setup" and not raw_items:
        raise missing("line_items")
    items: list[dict] = []
    for i, li in enumerate(raw_items):
        pre = f"line_items[{i}]"
        if not isinstance(li, dict):
            raise invalid(pre, "Invalid hash")
        if li.get("price"):
            price = srv.prices.get(li["price"])
            if price is None:
                raise no_such("price", li["price"], f"{pre}[price]", 400)
        elif isinstance(li.get("price_data"), dict):
            price = _build_price(srv, li["price_data"], f"{pre}[price_data]")
            price["active"] = False  # Stripe's inline prices are not reusable/listed as active
            srv.prices[price["id"]] = price
        else:
            raise missing(f"{pre}[price]")
        metered = (price["recurring"] or {}).get("usage_type") == "metered"
        qty = li.get("quantity")
        if metered and qty not in (None, ""):
            raise invalid(f"{pre}[quantity]", "Quantity should not be specified where "
                          "usage_type is `metered`. Remove quantity from `line_items[0]`.")
        if not metered and qty in (None, ""):
            raise missing(f"{pre}[quantity]")
        quantity = None if metered else to_int(qty, f"{pre}[quantity]", positive=True)
        if mode == "payment" and price["recurring"]:
            raise invalid(f"{pre}[price]", "You specified `payment` mode but passed a recurring "
                          "price. Either switch to `subscription` mode or use only one-time "
                          "prices.")
        items.append({"id": new_id("li_"), "object": "item", "price": price,
                      "quantity": quantity, "currency": price["currency"],
                      "amount_total": (price["unit_amount"] or 0) * (quantity or 0)})
    if mode == "subscription" and not any(it["price"]["recurring"] for it in items):
        raise invalid("line_items", "You must provide at least one recurring price in "
                      "`subscription` mode when using prices.")
    sess = _base("cs_test_", "checkout.session", p)
    sess["id"] = new_id("cs_test_", 58)
    currency = items[0]["currency"] if items else opt_str(p, "currency")
    sess.update(
        mode=mode, customer=customer, customer_email=opt_str(p, "customer_email"),
        client_reference_id=opt_str(p, "client_reference_id"),
        success_url=opt_str(p, "success_url"), cancel_url=opt_str(p, "cancel_url"),
        url=f"{srv.url}/checkout/{sess['id']}", status="open", payment_status="unpaid",
        currency=currency, amount_subtotal=None, amount_total=None,
        expires_at=to_int(p.get("expires_at") or now() + 86400, "expires_at"),
        subscription=None, payment_intent=None, setup_intent=None, invoice=None,
        line_items={"object": "list", "data": items, "has_more": False,
                    "url": f"/v1/checkout/sessions/{sess['id']}/line_items"},
    )
    if mode != "setup":
        total = sum(it["amount_total"] for it in items)
        sess["amount_subtotal"] = sess["amount_total"] = total
    srv.sessions[sess["id"]] = sess
    return _public_session(sess)


def _public_session(sess: dict) -> dict:
    # Stripe leaves line_items out unless expanded; the server keeps them for completion.
    return {k: v for k, v in sess.items() if k != "line_items"}


def get_session(srv: StripeLocal, p: Params, sid: str) -> dict:
    sess = _get(srv.sessions, sid, "checkout.session")
    expand = p.get("expand") or []
    return sess if "line_items" in expand else _public_session(sess)


# --- connect ------------------------------------------------------------------------------

def create_account(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"type", "email", "country", "capabilities", "metadata",
                    "business_type", "controller", "business_profile", "default_currency",
                    "settings", "tos_acceptance", "individual", "company"})
    typ = opt_str(p, "type") or ("express" if not p.get("controller") else "custom")
    if typ not in ("express", "standard", "custom"):
        raise invalid("type", "Invalid type: must be one of custom, express, or standard")
    caps = p.get("capabilities") or {}
    if not isinstance(caps, dict):
        raise invalid("capabilities", "Invalid hash")
    capabilities = {}
    for name, spec in caps.items():
        if isinstance(spec, dict) and to_bool(spec.get("requested", "false"),
                                              f"capabilities[{name}][requested]"):
            capabilities[name] = "inactive"
    acct = _base("acct_", "account", p)
    acct["id"] = new_id("acct_", 16)
    acct.update(type=typ, email=opt_str(p, "email"), country=opt_str(p, "country") or "US",
                default_currency=opt_str(p, "default_currency") or "usd",
                details_submitted=False, payouts_enabled=False, charges_enabled=False,
                capabilities=capabilities, business_type=opt_str(p, "business_type"),
                requirements={"currently_due": ["external_account", "tos_acceptance.date"],
                              "disabled_reason": "requirements.past_due"})
    srv.accounts[acct["id"]] = acct
    return acct


def get_account(srv: StripeLocal, p: Params, aid: str) -> dict:
    return _get(srv.accounts, aid, "account")


def create_account_link(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"account", "refresh_url", "return_url", "type", "collect",
                    "collection_options"})
    aid = req_str(p, "account")
    if aid not in srv.accounts:
        raise no_such("account", aid, "account", 400)
    typ = req_str(p, "type")
    if typ not in ("account_onboarding", "account_update"):
        raise invalid("type", "Invalid type: must be one of account_onboarding or "
                      "account_update")
    t = now()
    return {"object": "account_link", "created": t, "expires_at": t + 300,
            "url": f"{srv.url}/connect/setup/{aid}/{new_id('', 12)}"}


def create_transfer(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"amount", "currency", "destination", "transfer_group", "description",
                    "metadata", "source_transaction", "source_type"})
    if p.get("amount") in (None, ""):
        raise missing("amount")
    amount = to_int(p["amount"], "amount", positive=True)
    currency = req_str(p, "currency").lower()
    dest = req_str(p, "destination")
    acct = srv.accounts.get(dest)
    if acct is None:
        raise ApiError(400, f"No such destination: '{dest}'", code="resource_missing",
                       param="destination")
    if acct["capabilities"].get("transfers") != "active":
        raise ApiError(400, "Your destination account needs to have at least one of the "
                       "following capabilities enabled: transfers, crypto_transfers, "
                       "legacy_payments", code="insufficient_capabilities_for_transfer",
                       param="destination")
    tr = _base("tr_", "transfer", p)
    tr.update(amount=amount, amount_reversed=0, currency=currency, destination=dest,
              destination_payment=new_id("py_"), transfer_group=opt_str(p, "transfer_group"),
              description=opt_str(p, "description"), reversed=False,
              balance_transaction=new_id("txn_"), source_type="card",
              reversals={"object": "list", "data": [], "has_more": False,
                         "url": f"/v1/transfers/{tr['id']}/reversals"})
    srv.transfers.append(tr)
    return tr


def get_transfer(srv: StripeLocal, p: Params, tid: str) -> dict:
    tr = next((t for t in srv.transfers if t["id"] == tid), None)
    if tr is None:
        raise no_such("transfer", tid, "id")
    return tr


def list_transfers(srv: StripeLocal, p: Params) -> dict:
    check_known(p, {"destination", "transfer_group", "limit", "starting_after",
                    "ending_before", "created"})
    data = list(reversed(srv.transfers))
    for f in ("destination", "transfer_group"):
        if p.get(f):
            data = [t for t in data if t[f] == p[f]]
    return list_obj("/v1/transfers", data, opt_int(p, "limit", positive=True) or 10)
