"""Agent consumers: API-key clients calling /api/agent with one Idempotency-Key each."""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import requests

from webapp.api_auth import new_api_key
from workshop.bench_common import (
    create_admin,
    create_funded_users,
)
from workshop.fault_injection.config import (
    BACKOFF_START,
    CLIENT_TIMEOUT,
    DEFINITIVE_AGENT,
    MAX_ATTEMPTS,
    PENDING_RETRIES,
    Config,
    Stats,
    _backoff,
)


@dataclass
class Consumer:
    """An API client with a funded account; ``answers`` maps each key to its final answer."""

    user_id: uuid.UUID
    secret: str
    funded: int
    answers: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    streamed: set[str] = field(default_factory=set)
    stuck: list[str] = field(default_factory=list)


def _create_consumers(owner: psycopg.Connection[Any], cfg: Config) -> list[Consumer]:
    """Funded accounts (api.admin_adjust by an admin) with one API key each."""
    admin_id = create_admin(owner)
    tokens = cfg.agent_tokens or max(10, int(cfg.duration * 12))
    users = create_funded_users(owner, admin_id, cfg.consumers, tokens, "fault-agent")
    consumers = []
    for user_id in users:
        secret, prefix, key_hash = new_api_key()  # the app's own format and hashing
        owner.execute(
            "select api.create_api_key(%s, 'fault injection', %s, %s)", [user_id, prefix, key_hash]
        )
        consumers.append(Consumer(user_id, secret, tokens))
    return consumers


def _post_agent(
    session: requests.Session, base_url: str, consumer: Consumer, key: str, stream: bool
) -> tuple[int, str | None]:
    """One attempt; a stream is read to its end line and reduced to (status, reply) like JSON.

    A stream whose end line is a release (cost 0) counts as 502; one that broke off raises
    (requests.RequestException) and is retried like a lost connection."""
    response = session.post(
        f"{base_url}/api/agent",
        json={"message": f"fault injection request {key}", "stream": stream},
        headers={"Authorization": f"Bearer {consumer.secret}", "Idempotency-Key": key},
        timeout=CLIENT_TIMEOUT,
        stream=stream,
    )
    if response.status_code != 200 or not stream:
        body = response.json() if response.status_code == 200 else {}
        return response.status_code, body.get("reply")
    lines = [json.loads(raw) for raw in response.iter_lines() if raw]
    end = lines[-1] if lines else {}
    if end.get("done") or end.get("partial"):
        return 200, "".join(line.get("delta", "") for line in lines)
    if end.get("cost") == 0:
        return 502, None
    raise requests.ConnectionError(f"stream ended without a settlement: {end}")


def _call_agent(
    session: requests.Session,
    base_url: str,
    consumer: Consumer,
    key: str,
    stats: Stats,
    rng: random.Random,
) -> bool:
    """One logical request, retried with the same key; False when it must wait for the sweep."""
    delay = BACKOFF_START
    pending_seen = 0
    stream = key in consumer.streamed
    for _ in range(MAX_ATTEMPTS):
        stats.add("agent attempts")
        try:
            code, reply = _post_agent(session, base_url, consumer, key, stream)
        except (requests.RequestException, ValueError):
            stats.add("agent connection errors")
            delay = _backoff(delay, rng)
            continue
        if code in DEFINITIVE_AGENT:
            consumer.answers[key] = (code, reply)
            return True
        if code == 409:
            stats.add("agent 409 in progress")
            pending_seen += 1
            if pending_seen >= PENDING_RETRIES:
                return False
        elif code >= 500:
            stats.add("agent 5xx")
        else:
            stats.violation(f"agent key {key}: unexpected {code}")
            consumer.answers[key] = (code, None)
            return True
        delay = _backoff(delay, rng)
    return False


def _consume(
    base_url: str, consumer: Consumer, cfg: Config, started: float, stats: Stats, seed: int
) -> None:
    """Issue requests at a pace that spends the funding over the run (and a little more)."""
    rng = random.Random(seed)
    interval = cfg.duration / (consumer.funded * 1.25)
    with requests.Session() as session:
        n = 0
        while time.monotonic() - started < cfg.duration:
            key = f"fi-{consumer.user_id.hex[:8]}-{n}"
            n += 1
            stats.add("agent requests")
            if rng.random() < 0.5:
                consumer.streamed.add(key)
                stats.add("agent requests streamed")
            if not _call_agent(session, base_url, consumer, key, stats, rng):
                consumer.stuck.append(key)
            time.sleep(interval * (0.5 + rng.random()))
