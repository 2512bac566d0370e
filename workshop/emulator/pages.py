"""The hosted pages: pay, 3-D Secure challenge, receipt, and the index that says what this is."""

from __future__ import annotations

import copy
import datetime as dt
import json

from flask import Response, redirect, render_template, request

from workshop.emulator.api import _emulator, bp
from workshop.emulator.cards import CARDS
from workshop.emulator.config import (
    PayOutcome,
)
from workshop.emulator.state import Emulator
from workshop.emulator.wire import (
    ApiError,
    Obj,
)


def _session_page(emu: Emulator, session_id: str) -> tuple[Obj, list[Obj]] | None:
    with emu.lock:
        events = emu.expire_due()
        session = emu.sessions.get(session_id)
        snapshot = (copy.deepcopy(session), list(emu.line_items[session_id])) if session else None
    emu.deliver(events)
    return snapshot


def _render_pay(session_id: str, error: str | None = None, status: int = 200) -> Response:
    snapshot = _session_page(_emulator(), session_id)
    if snapshot is None:
        return Response(render_template("closed.html", session=None), 404)
    session, items = snapshot
    template = "pay.html" if session["status"] == "open" else "closed.html"
    code = status if session["status"] == "open" else 410
    html = render_template(
        template,
        session=session,
        items=items,
        error=error,
        form=request.form,
        cards=CARDS.values(),
    )
    return Response(html, code)


@bp.get("/pay/<session_id>")
def pay_page(session_id: str) -> Response:
    """Show the simulated hosted Checkout page."""
    return _render_pay(session_id)


@bp.post("/pay/<session_id>")
def pay_submit(session_id: str) -> Response:
    """Take a test card: pay, decline or reject, and deliver the resulting webhooks."""
    emu = _emulator()
    with emu.lock:
        try:
            outcome = emu.pay(session_id, request.form)
        except ApiError:
            outcome = None
    if outcome is None:
        return _render_pay(session_id)
    return _finish_pay(session_id, outcome)


def _finish_pay(session_id: str, outcome: PayOutcome) -> Response:
    """Deliver an outcome's events, then redirect (paid, 3-D Secure) or show the pay page again."""
    emu = _emulator()
    if outcome.kind == "paid":
        emu.deliver(outcome.events, duplicate=True)
        return redirect(outcome.redirect_url or "/", 303)
    emu.deliver(outcome.events)
    if outcome.kind == "authenticate":
        return redirect(outcome.redirect_url or "/", 303)
    return _render_pay(session_id, outcome.error, 402 if outcome.kind == "declined" else 400)


@bp.get("/pay/<session_id>/authenticate")
def authenticate_page(session_id: str) -> Response:
    """The simulated 3-D Secure challenge (the bank's page Stripe shows in a frame)."""
    emu = _emulator()
    with emu.lock:
        pi = copy.deepcopy(emu.pending_challenge(session_id))
    if pi is None:
        return redirect(f"/pay/{session_id}", 303)
    return Response(render_template("authenticate.html", session_id=session_id, pi=pi))


@bp.post("/pay/<session_id>/authenticate")
def authenticate_submit(session_id: str) -> Response:
    """Complete or fail the challenge; the same events and pages as Stripe afterwards."""
    emu = _emulator()
    with emu.lock:
        outcome = emu.authenticate(session_id, request.form.get("action") == "complete")
    return _finish_pay(session_id, outcome)


@bp.get("/receipts/<charge_id>")
def receipt(charge_id: str) -> Response:
    """Show a receipt for a charge, like Stripe's receipt_url."""
    emu = _emulator()
    with emu.lock:
        charge = copy.deepcopy(emu.charges.get(charge_id))
        refunds = [copy.deepcopy(r) for r in emu.refunds.values() if r["charge"] == charge_id]
    if charge is None or charge["status"] != "succeeded":
        return Response(render_template("closed.html", session=None), 404)
    paid_at = dt.datetime.fromtimestamp(charge["created"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Response(
        render_template("receipt.html", charge=charge, refunds=refunds, paid_at=paid_at)
    )


@bp.get("/")
def index() -> Response:
    """Say what this server is (scripts/run only checks that the port answers)."""
    emu = _emulator()
    with emu.lock:
        counts = {"sessions": len(emu.sessions), "events": len(emu.events)}
    return Response(
        json.dumps({"emulator": "tokenbill checkout emulator", "livemode": False, **counts}),
        mimetype="application/json",
    )
