"""Reusable test helpers: Stripe event builders and signing, a recording proxy for stripe-mock."""
