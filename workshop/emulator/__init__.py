"""A local stand-in for Stripe's Checkout API and hosted payment page (dev and tests only).

``python -m workshop.emulator`` serves it; see docs/emulator.md. By concern: ``wire`` (ids,
params, errors), ``config``, the state in layers (``store``, ``events``, ``sessions``,
``payments``, ``state``), the HTTP side (``api``, ``pages``, ``server``), ``cards`` and
``templates/``.
"""

from workshop.emulator.config import EmulatorConfig
from workshop.emulator.server import EmulatorServer, build_parser, create_app, main
from workshop.emulator.state import Emulator
from workshop.emulator.wire import DEFAULT_ENABLED_EVENTS, DEFAULT_PORT, DEFAULT_WEBHOOK_SECRET

__all__ = [
    "DEFAULT_ENABLED_EVENTS",
    "DEFAULT_PORT",
    "DEFAULT_WEBHOOK_SECRET",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "build_parser",
    "create_app",
    "main",
]
