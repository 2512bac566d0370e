"""The chat page and the metered agent endpoint ``POST /api/agent``.

Order of a call: authenticate (key or session+CSRF) → per-user rate limit → reserve the call's
most expensive price and record the request in PostgreSQL (api.begin_agent_request) → run the
agent through ``webapp.metering.metered``, the one generator both the JSON and the streaming
answer consume, which settles in PostgreSQL however the call ends. The request id is the
client's Idempotency-Key, bound to a hash of the request body. Prices and charges are the
database's; this module parses, calls, and renders what it was told.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from .agents import ChatAgent, Turn, get_agent, price_key
from .api_auth import api_login_required, api_user, resolve_api_user
from .db import MAX_ID, Database, get_db
from .extensions import csrf, limiter
from .metering import (
    AgentCall,
    Settlement,
    bounded_history,
    expire_stale_holds,
    metered,
    settle,
)
from .metrics import record_agent

bp = Blueprint("agent", __name__)
log = logging.getLogger(__name__)

DB_MAX_MESSAGE_CHARS = 20000  # api.begin_agent_request's hard bound; the setting may only lower it
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
NEED_TOKENS = "You need more tokens to use the agent"
FAILED = "The agent failed to answer; your tokens were returned."
TIMED_OUT = "The agent took too long to answer; your tokens were returned."
PARTIAL = "The agent stopped before finishing; you were charged for the part delivered."
IN_PROGRESS = "This request is still being answered; retry in a moment."
KEY_REUSED = "This Idempotency-Key was already used with a different request body."
UNSAVED = "The reply could not be saved; retry with the same Idempotency-Key later."


# ------------------------------------------------------------------------------------------
# Pages
# ------------------------------------------------------------------------------------------
def _conversation_or_404(user_id: uuid.UUID, raw_id: str) -> dict[str, Any]:
    """A conversation of this user; 404 for malformed ids and other people's conversations."""
    try:
        conversation_id = uuid.UUID(raw_id)
    except ValueError:
        abort(404)
    row = get_db().fetch_one(
        "select id, title, created_at from api.conversations where id = %s and user_id = %s",
        [conversation_id, user_id],
    )
    if row is None:
        abort(404)
    return row


MAX_PAGE_EXCHANGES = 100  # api.conversation_page's cap
MESSAGE_FIELDS = ("role", "content", "status", "request_id", "charged", "created_at")


def _int_arg(name: str, low: int, high: int) -> int | None:
    """A whole number from the query string (absent: None); anything else is a 400 saying so."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", raw) or not low <= int(raw) <= high:
        abort(400, f"{name} must be a whole number from {low} to {high}.")
    return int(raw)


def _page_size() -> int:
    """``?limit=`` (exchanges) or the configured page, within the database's cap."""
    size = _int_arg("limit", 1, MAX_PAGE_EXCHANGES)
    configured = int(current_app.config["AGENT_PAGE_EXCHANGES"])
    return size or max(1, min(configured, MAX_PAGE_EXCHANGES))


def _messages(
    user_id: uuid.UUID, conversation_id: uuid.UUID
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the conversation (``?before=`` an exchange id, newest page by default),
    oldest first, and the cursor of the page before it (None: this is the oldest)."""
    before = _int_arg("before", 1, MAX_ID)
    rows = get_db().fetch_all(
        "select * from api.conversation_page(%s, %s, %s, %s)",
        [user_id, conversation_id, before, _page_size()],
    )
    return rows, rows[0]["earlier"] if rows else None


def _price() -> dict[str, Any]:
    """The price row of the configured agent (the '*' row when the agent cannot be built)."""
    try:
        key = price_key(get_agent(current_app._get_current_object()))  # type: ignore[attr-defined]
    except Exception:  # a broken LLM setup fails requests, not the page
        key = "*"
    row = get_db().fetch_one("select * from api.agent_price(%s)", [key])
    assert row is not None
    return row


@bp.get("/")
@login_required
def chat():
    """Conversation list, the selected conversation (``?c=``) and the message box."""
    conversations = get_db().fetch_all(
        "select id, title, updated_at from api.conversations where user_id = %s"
        " order by updated_at desc limit 100",
        [current_user.id],
    )
    selected = None
    messages: list[dict[str, Any]] = []
    earlier = None
    if request.args.get("c"):
        selected = _conversation_or_404(current_user.id, request.args["c"])
        messages, earlier = _messages(current_user.id, selected["id"])
    price = _price()
    return render_template(
        "agent/chat.html",
        conversations=conversations,
        selected=selected,
        messages=messages,
        earlier=earlier,
        paged=selected is not None and "before" in request.args,
        token_cost=price["max_per_call"],
        price_label=price["label"],
        max_message_chars=_max_message_chars(),
    )


# ------------------------------------------------------------------------------------------
# Parsing and limits
# ------------------------------------------------------------------------------------------
def _agent_limit() -> str:
    return current_app.config["AGENT_RATE_LIMIT"]


def _rate_key() -> str:
    """Limit per user (not per IP): keys and sessions of one account share the budget."""
    user, _ = resolve_api_user()
    return f"agent-user:{user.id}" if user else f"agent-ip:{request.remote_addr}"


def _max_message_chars() -> int:
    return min(int(current_app.config["AGENT_MAX_MESSAGE_CHARS"]), DB_MAX_MESSAGE_CHARS)


def _hold_seconds(timeout: float) -> int:
    """How long a reservation lives before the expiry rule settles it: never shorter than a
    call may run (+5 s), or a live call's hold could be settled under it."""
    configured = int(current_app.config.get("AGENT_HOLD_SECONDS") or 0)
    floor = math.ceil(timeout) + 5
    return max(configured, floor) if configured > 0 else int(2 * timeout + 30)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer that always says how many tokens are left."""
    response = jsonify(body)
    response.status_code = status
    if body.get("balance") is not None:
        response.headers["X-Token-Balance"] = str(body["balance"])
    return response


def request_hash(message: str, conversation_id: uuid.UUID | None) -> str:
    """What an Idempotency-Key is bound to: the request's content, not how it is delivered."""
    canonical = json.dumps(
        {"message": message, "conversation_id": str(conversation_id) if conversation_id else None},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_call() -> tuple[str, uuid.UUID | None, bool, str]:
    """Validate the JSON body and Idempotency-Key; 400 (413 when too long) with a reason."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "Send a JSON object with a message.")
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        abort(400, "message must be a non-empty string.")
    limit = _max_message_chars()
    if len(message) > limit:
        abort(413, f"message must be at most {limit} characters.")
    conversation_id = None
    if data.get("conversation_id") is not None:
        try:
            conversation_id = uuid.UUID(str(data["conversation_id"]))
        except ValueError:
            abort(400, "conversation_id must be a UUID.")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        abort(400, "stream must be true or false.")
    request_id = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
    if not IDEMPOTENCY_KEY_RE.match(request_id):
        abort(400, "Idempotency-Key must be 1 to 200 printable ASCII characters.")
    return message, conversation_id, stream, request_id


# ------------------------------------------------------------------------------------------
# Answers
# ------------------------------------------------------------------------------------------
def _ended(settled: Settlement) -> tuple[int, dict[str, Any]]:
    """HTTP status and body fields for how a call ended."""
    fields: dict[str, Any] = {"balance": settled.balance, "cost": settled.charged}
    if settled.status == "done":
        return 200, fields
    if settled.status == "partial":
        return 200, {**fields, "partial": True, "warning": PARTIAL}
    if settled.status == "timeout":
        return 504, {**fields, "error": TIMED_OUT}
    return 502, {**fields, "error": FAILED}


def _answer(
    db: Database, call: AgentCall, agent: ChatAgent, history: list[Turn], timeout: float
) -> Response:
    """Run the agent to its end and answer with the whole reply (charged once computed)."""
    body: dict[str, Any] = {
        "request_id": call.request_id,
        "conversation_id": call.conversation_id,
        "price": call.price,
    }
    parts: list[str] = []
    settled: Settlement | None = None
    for item in metered(db, call, agent, history, timeout, streamed=False):
        if isinstance(item, Settlement):
            settled = item
        elif item is not None:
            parts.append(item)
    if settled is None:
        return _json({**body, "error": UNSAVED}, 503)
    status, fields = _ended(settled)
    if status == 200:
        fields = {"reply": "".join(parts), **fields, "agent": agent.name}
    return _json({**body, **fields}, status)


def _line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str) + "\n"


def _stream(
    db: Database, call: AgentCall, agent: ChatAgent, history: list[Turn], timeout: float
) -> Response:
    """NDJSON: a header line, ``{"delta"}`` lines, then one end line with the balance and cost."""

    def generate() -> Iterator[str]:
        inner = metered(db, call, agent, history, timeout, streamed=True)
        try:
            yield _line(
                {
                    "conversation_id": call.conversation_id,
                    "request_id": call.request_id,
                    "price": call.price,
                }
            )
            for item in inner:
                if isinstance(item, str):
                    yield _line({"delta": item})
                elif item is None:
                    yield _line({"error": UNSAVED})
                else:
                    done = {"done": True, "agent": agent.name} if item.status == "done" else {}
                    yield _line({**done, **_ended(item)[1]})
        finally:
            if inspect.getgeneratorstate(inner) == inspect.GEN_CREATED:
                # gone before the agent started: nothing was delivered
                settle(db, call, "disconnected", [], "the client disconnected")
            inner.close()

    response = Response(generate(), mimetype="application/x-ndjson")
    response.headers["X-Token-Balance"] = str(call.balance)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # let nginx pass lines through as they come
    return response


def _replay(row: dict[str, Any], request_id: str, stream: bool) -> Response:
    """The first call's outcome for a repeated Idempotency-Key; nothing is charged."""
    body = {
        "request_id": request_id,
        "conversation_id": row["conversation_id"],
        "balance": row["balance"],
        "price": row["price"],
        "cost": row["charged"],
        "replayed": True,
    }
    if row["status"] == "pending":
        return _json({**body, "error": IN_PROGRESS}, 409)
    if row["status"] == "timeout":
        return _json({**body, "error": TIMED_OUT}, 504)
    if row["status"] == "failed":
        return _json({**body, "error": FAILED}, 502)
    partial = {"partial": True, "warning": PARTIAL} if row["status"] == "partial" else {}
    if stream:
        lines = [
            _line({"conversation_id": row["conversation_id"], "request_id": request_id}),
            _line({"delta": row["reply"]}),
            _line({**(partial or {"done": True}), **body}),
        ]
        response = Response(lines, mimetype="application/x-ndjson")
        response.headers["X-Token-Balance"] = str(row["balance"])
        return response
    return _json({**body, "reply": row["reply"], **partial})


@bp.post("/api/agent")
@csrf.exempt  # key calls need none; session calls are checked in api_login_required
@api_login_required
@limiter.limit(_agent_limit, key_func=_rate_key)
def api_agent():
    """Reserve, run the agent, settle; answer with the reply, its cost and the balance."""
    message, conversation_id, stream, request_id = _parse_call()
    user = api_user()
    config = current_app.config
    timeout = float(config["AGENT_TIMEOUT_SECONDS"])
    db = get_db()
    expire_stale_holds(db)
    try:
        agent = get_agent(current_app._get_current_object())  # type: ignore[attr-defined]
    except Exception as exc:  # a broken LLM setup: refuse before reserving anything
        log.error("agent unavailable: %s", type(exc).__name__)
        return _json({"error": FAILED, "balance": user.balance}, 502)
    row = db.call(
        "select * from api.begin_agent_request(%s, %s, %s, %s, %s, %s, %s)",
        [
            user.id,
            request_id,
            conversation_id,
            message,
            price_key(agent),
            request_hash(message, conversation_id),
            _hold_seconds(timeout),
        ],
    )
    assert row is not None
    if row["outcome"] == "insufficient_tokens":
        record_agent("insufficient_tokens")
        return _json(
            {
                "error": NEED_TOKENS,
                "buy_url": url_for("billing.buy"),
                "balance": row["balance"],
                "price": row["price"],
            },
            402,
        )
    if row["outcome"] == "mismatch":
        record_agent("key_reused")
        return _json({"error": KEY_REUSED, "balance": row["balance"]}, 422)
    if row["outcome"] == "replayed":
        record_agent("replayed")
        return _replay(row, request_id, stream)

    call = AgentCall(
        user.id, request_id, row["conversation_id"], message, row["balance"], row["price"]
    )
    try:
        # a conversation this request started has no earlier exchange: no query for it
        history = (
            bounded_history(db, call, int(config["AGENT_HISTORY_CHARS"]))
            if conversation_id is not None
            else []
        )
    except psycopg.Error as exc:
        settled = settle(db, call, "failed", [], f"history: {exc.sqlstate}")
        fields = _ended(settled)[1] if settled else {"error": UNSAVED}
        return _json({"request_id": request_id, **fields}, 502)
    call = replace(call, input_chars=len(message) + sum(len(t.content) for t in history))
    if stream:
        return _stream(db, call, agent, history, timeout)
    return _answer(db, call, agent, history, timeout)


@bp.get("/api/conversations/<conversation_id>")
@api_login_required
def api_conversation(conversation_id: str):
    """One page of one of the caller's conversations (404 for anyone else's): the newest
    ``limit`` exchanges older than ``before``; ``before`` in the answer fetches the page
    before it (null: none)."""
    user = api_user()
    conversation = _conversation_or_404(user.id, conversation_id)
    messages, earlier = _messages(user.id, conversation["id"])
    return jsonify(
        id=conversation["id"],
        title=conversation["title"],
        messages=[{k: m[k] for k in MESSAGE_FIELDS} for m in messages],
        before=earlier,
    )
