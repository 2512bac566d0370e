"""The metered generator: run an agent under a deadline, record delivery, settle in PostgreSQL.

Both answers of ``POST /api/agent`` (webapp/agent.py) consume ``metered``: the JSON answer
collects its deltas, the streaming answer forwards each as it comes. However a call ends —
finished, failed, timed out, the client gone — it ends here, in one api.settle_agent_request
call, and the database decides what it costs: charged when anything was delivered, released
when nothing was (docs/agent.md has the table). This module measures (parts and characters
sent and received); it computes no price.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg

from .agents import ChatAgent, Turn
from .db import Database
from .metrics import record_agent

log = logging.getLogger(__name__)

HISTORY_EXCHANGES = 20  # at most this many earlier exchanges, whatever the character budget
SWEEP_EVERY_SECONDS = 60.0
PROGRESS_EVERY_SECONDS = 0.5  # after the first part, delivery progress is written this often

_sweep_lock = threading.Lock()
_last_sweep = 0.0


@dataclass(frozen=True)
class AgentCall:
    """A validated request whose price is reserved, with the size of what the model is sent."""

    user_id: uuid.UUID
    request_id: str
    conversation_id: uuid.UUID
    message: str
    balance: int
    price: int
    input_chars: int = 0


@dataclass(frozen=True)
class Settlement:
    """How a call ended, as the database settled it."""

    status: str  # the assistant message: done, partial, failed, timeout
    charged: int
    balance: int


def bounded_history(db: Database, call: AgentCall, budget: int) -> list[Turn]:
    """Earlier answered exchanges, oldest first: the newest whole exchanges within ``budget``
    characters (and at most HISTORY_EXCHANGES), so what one call sends the model is bounded."""
    rows = db.fetch_all(
        "select role, content from api.conversation_history("
        "%(u)s, %(c)s, %(r)s, %(n)s, %(budget)s)",
        {
            "c": call.conversation_id,
            "u": call.user_id,
            "r": call.request_id,
            "n": HISTORY_EXCHANGES,
            "budget": budget,
        },
    )
    return [Turn(row["role"], row["content"]) for row in rows]


def expire_stale_holds(db: Database) -> None:
    """At most once a minute per worker: settle holds past their expiry (dead workers')."""
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep < SWEEP_EVERY_SECONDS or not _sweep_lock.acquire(blocking=False):
        return
    try:
        _last_sweep = now
        row = db.fetch_one("select api.expire_agent_holds() as n")
        if row and row["n"]:
            log.warning("settled %s expired agent hold(s) left by a dead worker", row["n"])
            record_agent("expired", row["n"])
    except psycopg.Error as exc:  # housekeeping must never fail a user's request
        log.warning("could not expire agent holds: %s", exc.sqlstate)
    finally:
        _sweep_lock.release()


def settle(
    db: Database, call: AgentCall, outcome: str, parts: list[str], error: str | None
) -> Settlement | None:
    """Settle in PostgreSQL; None when the database could not be reached (the hold then
    expires by its rule). ``error`` is stored for operators, never logged (it may quote a
    provider's answer)."""
    if outcome != "done":
        log.warning(
            "agent request %s of user %s ended %s after %s part(s)",
            call.request_id,
            call.user_id,
            outcome,
            len(parts),
        )
    try:
        row = db.call(
            "select * from api.settle_agent_request(%s, %s, %s, %s, %s, %s, %s)",
            [
                call.user_id,
                call.request_id,
                outcome,
                "".join(parts),
                call.input_chars,
                (error or "")[:1000],
                len(parts),
            ],
        )
    except psycopg.Error as exc:
        log.error("could not settle %s: %s", call.request_id, exc.sqlstate)
        return None
    assert row is not None
    settled = Settlement(row["message_status"], row["charged"], row["balance"])
    record_agent({"done": "served", "partial": "partial"}.get(settled.status, "released"))
    return settled


def _record_delivery(db: Database, call: AgentCall, parts: int, chars: int) -> bool:
    row = db.call(
        "select api.record_agent_delivery(%s, %s, %s, %s, %s) as held",
        [call.user_id, call.request_id, parts, chars, call.input_chars],
    )
    return bool(row and row["held"])


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


def _run_whole(
    agent: ChatAgent, history: Sequence[Turn], message: str, timeout: float, parts: list[str]
) -> tuple[str, str | None]:
    """Run the agent to its end in one pass of one event loop, collecting its deltas into
    ``parts`` (kept when it times out or fails part-way). For a JSON answer nothing reaches
    the client before the end, so nothing needs recording between deltas; returns
    (outcome, error) as settle wants them."""

    async def run() -> None:
        async for delta in agent.stream(history, message):
            if delta:
                parts.append(str(delta))

    try:
        asyncio.run(asyncio.wait_for(run(), timeout))
    except TimeoutError:
        return "timeout", "timed out"
    except Exception as exc:
        log.warning("agent request failed: %s", type(exc).__name__)
        return "failed", f"{type(exc).__name__}: {exc}"
    return "done", None


async def collect(agent: ChatAgent, history: Sequence[Turn], message: str) -> str:
    """The whole reply, unmetered (the benchmark's control route)."""
    return "".join([delta async for delta in agent.stream(history, message)])


def metered(
    db: Database,
    call: AgentCall,
    agent: ChatAgent,
    history: list[Turn],
    timeout: float,
    *,
    streamed: bool,
) -> Iterator[str | Settlement | None]:
    """Yield the agent's deltas under the deadline, then the Settlement (None: unsaved).

    ``streamed``: each delta goes to the client as soon as it is yielded, so its delivery is
    recorded first (the first at once, then every PROGRESS_EVERY_SECONDS), and closing the
    generator (the client left) settles the call as 'disconnected'. Otherwise (a JSON answer)
    the agent runs to its end in one pass (``_run_whole``), then its deltas are yielded. Either
    way the database charges when anything was delivered and releases otherwise.
    """
    if not streamed:
        parts: list[str] = []
        outcome, error = _run_whole(agent, history, call.message, timeout, parts)
        yield from parts
        yield settle(db, call, outcome, parts, error)
        return
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    # one task runs the whole agent stream: its context managers must enter and exit in the
    # same task; this generator only waits on the queue, with the deadline
    producer = loop.create_task(_produce(agent, history, call.message, queue))
    deadline = loop.time() + timeout
    parts = []
    chars = 0
    recorded_at: float | None = None
    outcome, error = "done", None
    try:
        while True:
            remaining = max(0.0, deadline - loop.time())
            item = loop.run_until_complete(asyncio.wait_for(queue.get(), remaining))
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            delta = str(item)
            if not delta:
                continue
            now = time.monotonic()
            if recorded_at is None or now - recorded_at >= PROGRESS_EVERY_SECONDS:
                if not _record_delivery(db, call, len(parts) + 1, chars + len(delta)):
                    outcome, error = "timeout", "the hold expired while answering"
                    break
                recorded_at = now
            parts.append(delta)
            chars += len(delta)
            yield delta
    except TimeoutError:
        outcome, error = "timeout", "timed out"
    except GeneratorExit:
        settle(db, call, "disconnected", parts, "the client disconnected")
        raise
    except Exception as exc:
        log.warning("agent request %s failed: %s", call.request_id, type(exc).__name__)
        outcome, error = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        producer.cancel()
        loop.run_until_complete(asyncio.gather(producer, return_exceptions=True))
        loop.close()
    yield settle(db, call, outcome, parts, error)
