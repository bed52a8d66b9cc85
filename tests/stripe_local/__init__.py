"""A local Stripe API double that the official SDK talks to over HTTP (see ``server``)."""

from tests.stripe_local.server import StripeLocal

__all__ = ["StripeLocal"]
