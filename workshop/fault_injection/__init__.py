"""Fault injection: pay and consume through the real server while PostgreSQL and workers die.

``python -m workshop.fault_injection``; the run and its docstring are in ``runner``.
"""

from workshop.fault_injection.runner import Config, Result, main, run

__all__ = ["Config", "Result", "main", "run"]
