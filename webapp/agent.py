"""The chat page and the metered agent endpoint ``POST /api/agent``.

Order of a call: authenticate (key or session+CSRF) → per-user rate limit → charge the token
and record the request in PostgreSQL (api.begin_agent_request) → run the agent with a time
limit → store the reply, or mark the request failed and give the token back. The request id
is the client's Idempotency-Key, so a retry returns the first call's outcome instead of paying
twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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

from .agents import ChatAgent, Turn, get_agent
from .api_auth import api_login_required, api_user, resolve_api_user
from .db import Database, get_db
from .extensions import csrf, limiter
from .metrics import record_agent

bp = Blueprint("agent", __name__)
log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 20000  # api.begin_agent_request enforces the same bound
HISTORY_MESSAGES = 40
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
NEED_TOKENS = "You need more tokens to use the agent"
FAILED = "The agent failed to answer; your token was returned."
TIMED_OUT = "The agent took too long to answer; your token was returned."
IN_PROGRESS = "This request is still being answered; retry in a moment."
SWEEP_EVERY_SECONDS = 60.0

_sweep_lock = threading.Lock()
_last_sweep = 0.0


@dataclass(frozen=True)
class AgentCall:
    """A validated request, charged and recorded before the agent starts."""

    user_id: uuid.UUID
    request_id: str
    conversation_id: uuid.UUID
    message: str
    balance: int


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


def _messages(user_id: uuid.UUID, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    return get_db().fetch_all(
        "select role, content, status, request_id, created_at from api.messages"
        " where conversation_id = %s and user_id = %s order by id",
        [conversation_id, user_id],
    )


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
    if request.args.get("c"):
        selected = _conversation_or_404(current_user.id, request.args["c"])
        messages = _messages(current_user.id, selected["id"])
    return render_template(
        "agent/chat.html",
        conversations=conversations,
        selected=selected,
        messages=messages,
        token_cost=current_app.config["AGENT_TOKEN_COST"],
    )


# ------------------------------------------------------------------------------------------
# JSON API
# ------------------------------------------------------------------------------------------
def _agent_limit() -> str:
    return current_app.config["AGENT_RATE_LIMIT"]


def _rate_key() -> str:
    """Limit per user (not per IP): keys and sessions of one account share the budget."""
    user, _ = resolve_api_user()
    return f"agent-user:{user.id}" if user else f"agent-ip:{request.remote_addr}"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer that always says how many tokens are left."""
    response = jsonify(body)
    response.status_code = status
    if body.get("balance") is not None:
        response.headers["X-Token-Balance"] = str(body["balance"])
    return response


def _parse_call() -> tuple[str, uuid.UUID | None, bool, str]:
    """Validate the JSON body and Idempotency-Key; 400 with a reason otherwise."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "Send a JSON object with a message.")
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        abort(400, "message must be a non-empty string.")
    if len(message) > MAX_MESSAGE_CHARS:
        abort(400, f"message must be at most {MAX_MESSAGE_CHARS} characters.")
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


def _history(db: Database, call: AgentCall) -> list[Turn]:
    """Earlier answered exchanges of the conversation, oldest first."""
    rows = db.fetch_all(
        """
        select m.role, m.content from api.messages m
         where m.conversation_id = %s and m.user_id = %s and m.request_id <> %s
           and exists (select from api.messages a
                        where a.user_id = m.user_id and a.request_id = m.request_id
                          and a.role = 'assistant' and a.status = 'done')
         order by m.id desc limit %s
        """,
        [call.conversation_id, call.user_id, call.request_id, HISTORY_MESSAGES],
    )
    return [Turn(row["role"], row["content"]) for row in reversed(rows)]


def _expire_stale_requests(db: Database, timeout: float) -> None:
    """At most once a minute per worker: refund requests whose worker died mid-run.

    A request still pending after twice the agent timeout can no longer be answered (its
    process was killed), so its token goes back and a retry stops answering "in progress".
    """
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep < SWEEP_EVERY_SECONDS or not _sweep_lock.acquire(blocking=False):
        return
    try:
        _last_sweep = now
        row = db.fetch_one(
            "select api.expire_agent_requests(make_interval(secs => %s)) as n", [2 * timeout + 30]
        )
        if row and row["n"]:
            log.warning("expired %s agent request(s) left pending by a dead worker", row["n"])
            record_agent("expired", row["n"])
    except psycopg.Error as exc:  # housekeeping must never fail a user's request
        log.warning("could not expire stale agent requests: %s", exc.sqlstate)
    finally:
        _sweep_lock.release()


def _fail(db: Database, call: AgentCall, exc: BaseException, timed_out: bool) -> int:
    """Record the failure and give the token back; returns the balance after the refund."""
    record_agent("released")
    log.warning(
        "agent request %s of user %s %s: %s",
        call.request_id,
        call.user_id,
        "timed out" if timed_out else "failed",
        type(exc).__name__,
    )
    detail = "timed out" if timed_out else f"{type(exc).__name__}: {exc}"
    row = db.fetch_one(
        "select status, balance from api.fail_agent_request(%s, %s, %s, %s)",
        [call.user_id, call.request_id, detail[:1000], timed_out],
    )
    return row["balance"]  # type: ignore[index]


def _finish(db: Database, call: AgentCall, reply: str) -> int:
    row = db.fetch_one(
        "select balance from api.finish_agent_request(%s, %s, %s)",
        [call.user_id, call.request_id, reply],
    )
    return row["balance"]  # type: ignore[index]


async def _collect(agent: ChatAgent, history: Sequence[Turn], message: str) -> str:
    return "".join([delta async for delta in agent.stream(history, message)])


_END = object()


async def _produce(
    agent: ChatAgent, history: Sequence[Turn], message: str, queue: asyncio.Queue[object]
) -> None:
    """Feed the agent's deltas into ``queue``, then the end marker or the exception."""
    try:
        async for delta in agent.stream(history, message):
            await queue.put(delta)
    except Exception as exc:
        await queue.put(exc)
    else:
        await queue.put(_END)


def _answer(call: AgentCall, agent: ChatAgent, history: list[Turn], timeout: float) -> Response:
    """Run the agent to completion and answer with the whole reply."""
    db = get_db()
    body: dict[str, Any] = {"request_id": call.request_id, "conversation_id": call.conversation_id}
    try:
        reply = asyncio.run(asyncio.wait_for(_collect(agent, history, call.message), timeout))
    except TimeoutError as exc:
        return _json({**body, "error": TIMED_OUT, "balance": _fail(db, call, exc, True)}, 504)
    except Exception as exc:
        return _json({**body, "error": FAILED, "balance": _fail(db, call, exc, False)}, 502)
    balance = _finish(db, call, reply)
    record_agent("served")
    return _json({**body, "reply": reply, "balance": balance, "agent": agent.name})


def _line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str) + "\n"


def _stream(call: AgentCall, agent: ChatAgent, history: list[Turn], timeout: float) -> Response:
    """Answer as NDJSON: ``{"delta"}`` lines, then ``{"done"}`` or ``{"error"}`` with a balance."""
    db = get_db()  # captured: the generator runs after the view has returned

    def generate() -> Iterator[str]:
        loop = asyncio.new_event_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        # one task runs the whole agent stream: its context managers must enter and exit in
        # the same task; this generator only waits on the queue, with the deadline
        producer = loop.create_task(_produce(agent, history, call.message, queue))
        deadline = loop.time() + timeout
        parts: list[str] = []
        try:
            yield _line({"conversation_id": call.conversation_id, "request_id": call.request_id})
            while True:
                remaining = max(0.0, deadline - loop.time())
                item = loop.run_until_complete(asyncio.wait_for(queue.get(), remaining))
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                parts.append(str(item))
                yield _line({"delta": item})
        except TimeoutError as exc:
            yield _line({"error": TIMED_OUT, "balance": _fail(db, call, exc, True)})
            return
        except Exception as exc:
            yield _line({"error": FAILED, "balance": _fail(db, call, exc, False)})
            return
        except GeneratorExit as exc:
            # the client went away mid-answer: it never got the reply, so it does not pay
            _fail(db, call, exc, False)
            raise
        finally:
            producer.cancel()
            loop.run_until_complete(asyncio.gather(producer, return_exceptions=True))
            loop.close()
        try:
            balance = _finish(db, call, "".join(parts))
        except psycopg.Error as exc:
            # headers are long gone: report in-band (e.g. the request was expired meanwhile)
            log.error("could not store reply of %s: %s", call.request_id, exc.sqlstate)
            yield _line({"error": "The reply could not be saved; retry later."})
            return
        record_agent("served")
        yield _line({"done": True, "balance": balance, "agent": agent.name})

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
        "replayed": True,
    }
    if row["status"] == "pending":
        return _json({**body, "error": IN_PROGRESS}, 409)
    if row["status"] == "timeout":
        return _json({**body, "error": TIMED_OUT}, 504)
    if row["status"] == "failed":
        return _json({**body, "error": FAILED}, 502)
    if stream:
        lines = [
            _line({"conversation_id": row["conversation_id"], "request_id": request_id}),
            _line({"delta": row["reply"]}),
            _line({"done": True, "balance": row["balance"], "replayed": True}),
        ]
        response = Response(lines, mimetype="application/x-ndjson")
        response.headers["X-Token-Balance"] = str(row["balance"])
        return response
    return _json({**body, "reply": row["reply"]})


@bp.post("/api/agent")
@csrf.exempt  # key calls need none; session calls are checked in api_login_required
@api_login_required
@limiter.limit(_agent_limit, key_func=_rate_key)
def api_agent():
    """Charge a token, run the agent, answer with the reply and the remaining balance."""
    message, conversation_id, stream, request_id = _parse_call()
    user = api_user()
    cost = current_app.config["AGENT_TOKEN_COST"]
    timeout = float(current_app.config["AGENT_TIMEOUT_SECONDS"])
    _expire_stale_requests(get_db(), timeout)
    row = get_db().fetch_one(
        "select * from api.begin_agent_request(%s, %s, %s, %s, %s)",
        [user.id, request_id, conversation_id, message, cost],
    )
    assert row is not None
    if row["outcome"] == "insufficient_tokens":
        record_agent("insufficient_tokens")
        return _json(
            {"error": NEED_TOKENS, "buy_url": url_for("billing.buy"), "balance": row["balance"]},
            402,
        )
    if row["outcome"] == "replayed":
        record_agent("replayed")
        return _replay(row, request_id, stream)

    call = AgentCall(user.id, request_id, row["conversation_id"], message, row["balance"])
    db = get_db()
    try:
        agent = get_agent(current_app._get_current_object())  # type: ignore[attr-defined]
        history = _history(db, call)
    except Exception as exc:
        return _json({"error": FAILED, "balance": _fail(db, call, exc, False)}, 502)
    if stream:
        return _stream(call, agent, history, timeout)
    return _answer(call, agent, history, timeout)


@bp.get("/api/conversations/<conversation_id>")
@api_login_required
def api_conversation(conversation_id: str):
    """One of the caller's conversations with its messages (404 for anyone else's)."""
    user = api_user()
    conversation = _conversation_or_404(user.id, conversation_id)
    messages = _messages(user.id, conversation["id"])
    return jsonify(
        id=conversation["id"],
        title=conversation["title"],
        messages=[
            {k: m[k] for k in ("role", "content", "status", "request_id", "created_at")}
            for m in messages
        ],
    )
