"""Runs the DBAs' pgTAP suite (db/tests/*.sql) with pg_prove against this run's database.

The SQL tests are the contract a DBA can run alone; concurrency and fault tests stay in Python.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

PGTAP_DIR = Path(__file__).resolve().parents[2] / "db" / "tests"


def libpq_env(database_url: str) -> dict[str, str]:
    """PG* variables for the URL: pg_prove hands psql a bare name, not a conninfo string."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    names["password"] = "PGPASSWORD"
    params = conninfo_to_dict(database_url)
    return {**os.environ, **{env: str(params[key]) for key, env in names.items() if key in params}}


def test_pgtap_suite_passes(database_url: str) -> None:
    files = sorted(PGTAP_DIR.glob("*.sql"))
    assert files, "no pgTAP files under db/tests"
    proc = subprocess.run(
        ["pg_prove", "--failures", *map(str, files)],
        env=libpq_env(database_url),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Result: PASS" in proc.stdout
