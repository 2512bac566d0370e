""".env.example documents every setting and works both as bash (scripts/run) and for dotenv."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"


def test_bash_and_dotenv_read_the_same_values():
    script = f'set -a; . "{EXAMPLE}"; set +a; env -0'
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env={})
    bash_env = dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    for key, value in dotenv_values(EXAMPLE).items():
        assert bash_env.get(key) == (value or ""), key
    assert out.stderr == b""


def test_every_variable_the_code_reads_is_documented():
    pattern = re.compile(r'(?:environ(?:\.get)?\(?\[?|_flag\(|_int\()"([A-Z][A-Z0-9_]+)"')
    used = {
        name for path in ROOT.glob("webapp/**/*.py") for name in pattern.findall(path.read_text())
    }
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", EXAMPLE.read_text(), re.MULTILINE))
    assert used, "found no settings: the pattern is stale"
    assert used - documented == set()
