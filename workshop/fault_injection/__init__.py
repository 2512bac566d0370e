"""Fault injection: pay and consume through the real server while PostgreSQL and workers die.

``python -m workshop.fault_injection``; the run is in ``runner`` (its docstring says what it
does), Stripe's side in ``stripe_side``, agent clients in ``agents``, the checks in ``verify``.
"""

from workshop.fault_injection.config import Config, Result
from workshop.fault_injection.runner import main, run

__all__ = ["Config", "Result", "main", "run"]
