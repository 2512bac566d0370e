"""The production app plus one bench-only route, for measuring what billing costs per request.

``POST /bench/agent-unbilled`` is ``POST /api/agent`` without the ledger: it authenticates the
same way (an API key through webapp.api_auth), passes the same rate limiter, runs the same
agent on the message and answers the same JSON shape, but never calls
api.begin_agent_request / api.settle_agent_request (nothing reserved, nothing stored). The
difference in latency between the two routes is the cost of billing.

``POST /bench/agent-round-trips`` is the unbilled route plus two ``select 1`` through the same
pool, one where billing reserves and one where it settles: the round trips billing cannot do
without, with no work in them. Billed minus this route is what the reservation and the settle
do in PostgreSQL; this route minus the unbilled one is what two round trips cost on this
machine (on a virtual machine whose idle CPUs halt, mostly waking the backend).

``POST /bench/webhook-verify-only`` is the webhook's control: it runs the webhook's own
``webapp.webhooks.verify_delivery`` (same secret, body, SDK call and error replies as
``POST /api/webhook/stripe``, behind the same app and middleware) and answers, but never
touches the database, so a grant's rate can be compared with what the server does per
delivery before PostgreSQL. What the grant does beyond it: the database call, one log line
and one metric increment.

These routes exist only here: ``webapp.create_app()`` never registers them (a test checks), and only
``workshop.bench_http`` serves ``workshop.bench_app:create_bench_app()``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, abort, current_app, jsonify, request

from webapp import create_app
from webapp.agent import _agent_limit, _rate_key
from webapp.agents import get_agent
from webapp.api_auth import api_login_required, api_user
from webapp.db import get_db
from webapp.extensions import csrf, limiter
from webapp.metering import collect
from webapp.webhooks import Delivery, verify_delivery

bp = Blueprint("bench", __name__, url_prefix="/bench")
UNBILLED_PATH = "/bench/agent-unbilled"
ROUND_TRIPS_PATH = "/bench/agent-round-trips"
VERIFY_ONLY_PATH = "/bench/webhook-verify-only"


@bp.post("/agent-unbilled", defaults={"round_trips": False})
@bp.post("/agent-round-trips", defaults={"round_trips": True})
@csrf.exempt
@api_login_required
@limiter.limit(_agent_limit, key_func=_rate_key)
def agent_unbilled(round_trips: bool) -> Any:
    """Run the agent for an authenticated caller and answer like /api/agent, without billing;
    ``round_trips``: with an empty database round trip where billing reserves and settles."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        abort(400, "Send a JSON object with a message.")
    user = api_user()
    agent = get_agent(current_app._get_current_object())  # type: ignore[attr-defined]
    timeout = float(current_app.config["AGENT_TIMEOUT_SECONDS"])
    if round_trips:
        get_db().call("select 1")  # where api.begin_agent_request would run
    reply = asyncio.run(asyncio.wait_for(collect(agent, [], data["message"]), timeout))
    if round_trips:
        get_db().call("select 1")  # where api.settle_agent_request would run
    response = jsonify(
        request_id=request.headers.get("Idempotency-Key") or uuid.uuid4().hex,
        conversation_id=None,
        reply=reply,
        balance=user.balance,
        agent=agent.name,
    )
    response.headers["X-Token-Balance"] = str(user.balance)
    return response


@bp.post("/webhook-verify-only")
@csrf.exempt
@limiter.exempt
def webhook_verify_only():
    """Verify a Stripe delivery with the webhook's own code, then answer without the database."""
    delivery = verify_delivery()
    if not isinstance(delivery, Delivery):
        return delivery
    return jsonify(outcome="verified", id=delivery.event_id)


def create_bench_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """``webapp.create_app()`` with the bench-only control routes registered."""
    app = create_app(test_config)
    app.register_blueprint(bp)
    return app
