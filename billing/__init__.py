"""Billing: Stripe customers, prepaid credits by Checkout, postpaid usage through Stripe's
meter, webhooks, Connect payouts, statements — all from the SQL ledger."""

from . import statements
from .payouts import PayoutResult, period_bounds
from .service import Billing, BillingPolicy
from .stripe_api import METER_EVENT, MICRO_PER_CENT, StripeConfig, StripeGateway
from .tables import BillingProfile, CheckoutRecord, Payout, StripeEvent, UsageReport
from .usage import SyncResult, collect, sync

__all__ = [
    "METER_EVENT", "MICRO_PER_CENT", "Billing", "BillingPolicy", "BillingProfile",
    "CheckoutRecord", "Payout", "PayoutResult", "StripeConfig", "StripeEvent", "StripeGateway",
    "SyncResult", "UsageReport", "collect", "period_bounds", "statements", "sync",
]
