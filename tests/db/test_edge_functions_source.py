"""The Edge Functions' TypeScript type-checks, lints and is formatted (Deno's own tools)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.edge_functions import DENO, FUNCTIONS_DIR, deno_env


@pytest.mark.parametrize(
    "command",
    [
        ["check", "--frozen", "stripe-webhook/index.ts", "agent-meter/index.ts"],
        ["lint"],
        ["fmt", "--check"],
    ],
    ids=lambda c: c[0],
)
def test_deno_accepts_the_functions(command: list[str]):
    result = subprocess.run(
        [str(DENO), *command],
        cwd=FUNCTIONS_DIR,
        env=deno_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
