"""A local stand-in for Stripe's Checkout API and hosted payment page (dev and tests only).

``python -m workshop.emulator`` serves it; see docs/emulator.md.
"""
