"""workshop/envfile.py: fills what .env leaves unset, keeps what the user wrote, reads the same
in bash (scripts/run sources .env) and in python-dotenv (the app and `flask` read it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from workshop.envfile import set_defaults


def _bash_values(path: Path, *keys: str) -> list[str]:
    script = f'set -a; . "{path}"; set +a; ' + "; ".join(f'printf "%s\\0" "${k}"' for k in keys)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env={})
    return out.stdout.decode().split("\0")[:-1]


def test_user_values_are_kept_and_empty_ones_filled_in_place(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# notes\nSECRET_KEY=mine\nexport DATABASE_URL=''\nPORT=5001\n")
    written = set_defaults(env, {"SECRET_KEY": "generated", "DATABASE_URL": "postgresql://x/db"})
    assert written == ["DATABASE_URL"]
    assert env.read_text().splitlines() == [
        "# notes",
        "SECRET_KEY=mine",
        "DATABASE_URL=postgresql://x/db",
        "PORT=5001",
    ]
    assert set_defaults(env, {"DATABASE_URL": "postgresql://other/db"}) == []


def test_values_read_the_same_in_bash_and_dotenv(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    tricky = {"A": "with space", "B": '$HOME and `cmd` and "q"', "C": "plain-1.2:3/4"}
    assert set_defaults(env, tricky) == ["A", "B", "C"]
    assert dotenv_values(env) == tricky
    assert _bash_values(env, "A", "B", "C") == list(tricky.values())
    assert env.stat().st_mode & 0o077 == 0  # created private: it may hold SECRET_KEY


def test_values_the_two_would_read_differently_are_refused(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    for value in ("it's", "back\\slash", "two\nlines"):
        with pytest.raises(ValueError, match="not portable"):
            set_defaults(env, {"X": value})
    assert not env.exists()
