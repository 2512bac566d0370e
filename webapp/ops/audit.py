"""``flask --app webapp audit``: compare every balance and agent hold with the ledger.

api.ledger_audit() reads the whole ledger (seconds at millions of rows), so it never runs on
a page load: operators run this command (from cron, say), admins press the button on
/admin/audit. Exit status 1 when anything disagrees, so a scheduler can alert on it.
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from .connection import operator_connection


@click.command("audit")
@with_appcontext
def command() -> None:
    """Run the ledger audit; print each discrepancy; exit 1 if there is any."""
    with operator_connection() as conn:
        rows = conn.execute(
            "select user_id, balance, ledger_sum, last_balance_after, problem, request_id"
            " from api.ledger_audit()"
        ).fetchall()
    for user_id, balance, ledger_sum, last_after, problem, request_id in rows:
        held = f" ({request_id})" if request_id else ""
        click.echo(
            f"{user_id}: balance {balance}, ledger sum {ledger_sum},"
            f" last balance_after {last_after}: {problem}{held}"
        )
    if rows:
        raise click.ClickException(f"{len(rows)} discrepancies between balances and the ledger")
    click.echo("No discrepancies: every balance equals the sum of its ledger.")
