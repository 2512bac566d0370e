"""A worker killed mid-stream: its holds expire to the written rule, and none survives.

Real gunicorn (workshop/procs.py, as the fault-injection run uses it) serving the app against
this run's database, the app's LLMAgent streaming from tests/support/model_stub.py. One stream
has delivered parts when ``kill -9`` hits its worker, another has delivered nothing; after
their holds' expiry the first is charged (output was sent: the database recorded it before
the worker handed the parts over) and the second released, and a retry learns each outcome
for free.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import WEBHOOK_SECRET, audit, balance_of
from tests.support.agents import create_key, ledger_kinds, open_holds
from tests.support.model_stub import ModelStub
from workshop import procs

TIMEOUT_SECONDS = 5  # longer than the test needs to read 3 parts and kill the worker
HOLD_SECONDS = TIMEOUT_SECONDS + 5  # the shortest hold the app allows


def start_stream(base_url: str, secret: str, key: str, message: str) -> requests.Response:
    response = requests.post(
        f"{base_url}/api/agent",
        json={"message": message, "stream": True},
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
        stream=True,
        timeout=(5, 30),
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.timeout(120)
def test_holds_of_a_killed_worker_expire_by_the_rule(database_url, owner, make_user):
    talker, silent = make_user(balance=5), make_user(balance=5)
    talker_key, silent_key = create_key(owner, talker), create_key(owner, silent)
    with (
        ModelStub(parts=50, stalls={"talk then hang": 3, "hang at once": 0}) as stub,
        tempfile.TemporaryDirectory(prefix="tokenbill-kill-") as tmp,
    ):
        env = {
            "TOKENBILL_ENV": "development",
            "DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "AGENT_RATE_LIMIT": "1000 per minute",
            "AGENT_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),  # only the kill ends these streams
            "AGENT_HOLD_SECONDS": str(HOLD_SECONDS),
            **{k: str(v) for k, v in stub.app_config().items()},
        }
        log = Path(tmp) / "gunicorn.log"
        with procs.gunicorn("webapp:create_app()", env, log, workers=1, threads=4) as server:
            talking = start_stream(server.url, talker_key, "talk-1", "talk then hang")
            hanging = start_stream(server.url, silent_key, "hang-1", "hang at once")
            lines = talking.iter_lines()
            assert "request_id" in json.loads(next(lines))
            deltas = [json.loads(next(lines))["delta"] for _ in range(3)]
            assert deltas == ["part 1 ", "part 2 ", "part 3 "]
            assert "request_id" in json.loads(next(hanging.iter_lines()))

            for pid in server.worker_pids():
                os.kill(pid, signal.SIGKILL)
            talking.close()
            hanging.close()
            assert open_holds(owner, talker) == open_holds(owner, silent) == 1
            server.wait_ready()  # the master forked a new worker

            time.sleep(HOLD_SECONDS + 0.5)  # past both holds' expiry
            retries = {}
            for secret, key, message in [
                (talker_key, "talk-1", "talk then hang"),
                (silent_key, "hang-1", "hang at once"),
            ]:
                retries[key] = requests.post(
                    f"{server.url}/api/agent",
                    json={"message": message},
                    headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
                    timeout=30,
                )

    # output had been sent: charged, the reply marked partial
    talked = retries["talk-1"]
    assert talked.status_code == 200 and talked.json()["replayed"] is True
    assert (talked.json()["partial"], talked.json()["cost"]) == (True, 1)
    assert balance_of(owner, talker) == 4
    assert ledger_kinds(owner, talker)[-1] == "reserve"
    # nothing had been sent: released
    assert retries["hang-1"].status_code == 504 and retries["hang-1"].json()["cost"] == 0
    assert balance_of(owner, silent) == 5
    assert ledger_kinds(owner, silent)[-2:] == ["reserve", "release"]
    holds = owner.execute(
        "select request_id, status, outcome, delivered_parts from api.agent_holds"
        " where user_id = any(%s) order by request_id",
        [[talker, silent]],
    ).fetchall()
    assert [(h["request_id"], h["status"], h["outcome"]) for h in holds] == [
        ("hang-1", "released", "expired"),
        ("talk-1", "settled", "expired"),
    ]
    assert holds[1]["delivered_parts"] >= 1
    assert open_holds(owner, talker) == open_holds(owner, silent) == 0
    assert audit(owner) == []
