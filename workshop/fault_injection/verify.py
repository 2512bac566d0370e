"""The promises checked after the run: granted once; each request paid once or released."""

from __future__ import annotations

from typing import Any

import psycopg

from workshop.fault_injection.agents import (
    Consumer,
)
from workshop.fault_injection.config import (
    Stats,
)
from workshop.fault_injection.stripe_side import (
    Payment,
)


def _verify_payments(owner: psycopg.Connection[Any], payments: list[Payment], stats: Stats) -> None:
    expected = {p.payment_intent: p for p in payments}
    rows = owner.execute(
        """
        select p.payment_intent_id, p.status, p.user_id, p.tokens_granted,
               count(l.id) filter (where l.kind = 'purchase') as purchases
          from tokenbill.payments p
          left join tokenbill.ledger l on l.payment_id = p.id
         group by p.id
        """
    ).fetchall()
    granted = 0
    for pi, status, user_id, tokens, purchases in rows:
        payment = expected.get(pi)
        if payment is None:
            stats.violation(f"payment {pi} was never sent")
            continue
        if status != "granted" or purchases != 1 or user_id != payment.user_id:
            stats.violation(f"payment {pi}: status {status}, {purchases} purchase rows")
        elif tokens != payment.tokens:
            stats.violation(f"payment {pi}: granted {tokens} tokens, package has {payment.tokens}")
        else:
            granted += 1
    stats.add("payments granted", granted)
    if granted != len(payments):
        stats.violation(f"{granted} of {len(payments)} payments granted exactly once")
    balances = dict(
        owner.execute(
            "select u.id, u.balance from tokenbill.users u where u.id = any(%s)",
            [[p.user_id for p in payments]],
        ).fetchall()
    )
    for p in payments:
        if balances.get(p.user_id) != p.tokens:
            stats.violation(f"buyer {p.user_id}: balance {balances.get(p.user_id)} != {p.tokens}")
    outcomes = dict(
        owner.execute("select outcome, count(*) from tokenbill.stripe_events group by 1").fetchall()
    )
    if set(outcomes) != {"processed"} or outcomes["processed"] != 2 * len(payments):
        stats.violation(
            f"webhook inbox outcomes {outcomes}, expected {2 * len(payments)} processed"
        )


def _verify_consumer(owner: psycopg.Connection[Any], c: Consumer, stats: Stats) -> None:
    served = {k for k, (code, _) in c.answers.items() if code == 200}
    refused = {k for k, (code, _) in c.answers.items() if code == 402}
    failed = {k for k, (code, _) in c.answers.items() if code in (502, 504)}
    stats.add("agent served", len(served))
    stats.add("agent refused (402)", len(refused))
    stats.add("agent refunded (502/504)", len(failed))
    who = f"consumer {c.user_id}"
    if c.stuck:
        stats.violation(f"{who}: no definitive answer for {c.stuck}")
    holds = {
        k: (status, charged)
        for k, status, charged in owner.execute(
            "select request_id, status, charged from api.agent_holds where user_id = %s",
            [c.user_id],
        ).fetchall()
    }
    reserved = [
        k
        for (k,) in owner.execute(
            "select request_id from tokenbill.ledger where user_id = %s and kind = 'reserve'",
            [c.user_id],
        ).fetchall()
    ]
    settled = {k for k, (status, _) in holds.items() if status == "settled"}
    released = {k for k, (status, _) in holds.items() if status == "released"}
    held = sorted(k for k, (status, _) in holds.items() if status == "held")
    if len(reserved) != len(set(reserved)):
        stats.violation(f"{who}: a key was reserved twice")
    if set(reserved) != served | failed:
        stats.violation(
            f"{who}: reserved keys differ from answered ones: "
            f"missing {sorted(served | failed - set(reserved))}, "
            f"extra {sorted(set(reserved) - served - failed)}"
        )
    if settled != served:
        stats.violation(f"{who}: charged {sorted(settled ^ served)} do not match 200 answers")
    if released != failed:
        stats.violation(f"{who}: releases {sorted(released ^ failed)} do not match failures")
    if held:
        stats.violation(f"{who}: holds never settled {held}")
    messages = {
        k: (status, content)
        for k, status, content in owner.execute(
            "select request_id, status, content from api.messages"
            " where user_id = %s and role = 'assistant'",
            [c.user_id],
        ).fetchall()
    }
    for key in served:
        status, content = messages.get(key, ("missing", None))
        if status not in ("done", "partial") or content != c.answers[key][1]:
            stats.violation(f"{who}: key {key} answered 200 but stored {messages.get(key)}")
    for key in failed:
        if messages.get(key, ("missing",))[0] not in ("failed", "timeout"):
            stats.violation(f"{who}: key {key} answered a failure but stored {messages.get(key)}")
    pending = [k for k, (status, _) in messages.items() if status == "pending"]
    if pending:
        stats.violation(f"{who}: requests still pending {pending}")
    charged = sum(charged or 0 for _, charged in holds.values())
    row = owner.execute("select balance from tokenbill.users where id = %s", [c.user_id]).fetchone()
    if row is None or row[0] != c.funded - charged:
        stats.violation(f"{who}: balance {row and row[0]} != funded {c.funded} - charged {charged}")


def _verify(
    owner: psycopg.Connection[Any], payments: list[Payment], consumers: list[Consumer], stats: Stats
) -> None:
    _verify_payments(owner, payments, stats)
    for consumer in consumers:
        _verify_consumer(owner, consumer, stats)
    audit = owner.execute("select * from api.ledger_audit()").fetchall()
    if audit:
        stats.violation(f"api.ledger_audit() found {len(audit)} problem(s): {audit[:5]}")
