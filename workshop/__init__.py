"""The workshop: everything that helps build, test and demonstrate tokenbill but never ships.

Local services (PostgreSQL, stripe-mock), the Stripe Checkout emulator, event fixtures and
``send_event``, fault injection, benchmarks, the browser tour and screenshots. The product
(``webapp/``, ``db/``, ``frontend/``) never imports this package (tests/test_layout.py checks).
"""
