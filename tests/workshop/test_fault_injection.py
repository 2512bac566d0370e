"""The short form of the fault-injection run: faults are random, the invariants never are.

It starts its own PostgreSQL cluster and gunicorn (nothing shared is restarted), so it needs
only the PostgreSQL binaries; it asserts on the run's result object, not on what it prints.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from workshop import fault_injection

SHORT = fault_injection.Config(
    payments=20,
    consumers=2,
    duration=12.0,
    pg_restarts=2,
    worker_kills=2,
    agent_tokens=400,  # ~40 requests/s from each consumer: enough to be in flight at a fault
)
TMP = Path(tempfile.gettempdir())


def _ours() -> set[Path]:
    """Temp dirs of private clusters and kept logs (the run's own prefixes)."""
    return {p for prefix in ("tokenbill-pg-", "tokenbill-faults-") for p in TMP.glob(prefix + "*")}


@pytest.mark.timeout(120)
def test_payments_and_agent_calls_survive_restarts_and_killed_workers() -> None:
    before = _ours()

    result = fault_injection.run(SHORT)

    assert result.ok, f"seed {result.seed}, logs {result.log_dir}: {result.violations}"
    assert result.violations == []
    counts = result.counts
    assert counts["payments granted"] == SHORT.payments
    assert counts["pg restarts (fast)"] == 1
    assert counts["pg restarts (immediate)"] == 1
    assert counts["worker kills"] == SHORT.worker_kills
    # each payment is two events, some delivered twice, plus redeliveries while waiting
    assert counts["webhook deliveries"] >= 2 * SHORT.payments
    answered = (
        counts["agent served"] + counts["agent refused (402)"] + counts["agent refunded (502/504)"]
    )
    assert answered == counts["agent requests"] > 0
    # a clean run stops its cluster and server and leaves no files behind
    assert result.log_dir is None
    assert _ours() - before == set()
