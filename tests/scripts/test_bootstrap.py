"""scripts/bootstrap.sh picks a Python the project runs on, even where python3 is too old.

Ubuntu 22.04's python3 is 3.10 (the code needs 3.11: asyncio.timeout, datetime.UTC); its
python3.11 package must be the one that makes .venv.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def _find_python(path: str, python: str = "") -> subprocess.CompletedProcess[str]:
    """Source bootstrap.sh (a no-op with a current .venv), then ask which Python it would use."""
    script = f'. scripts/bootstrap.sh && PATH="{path}" PYTHON="{python}" _tb_find_python'
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )


def _old_python(folder: Path) -> Path:
    """A python3 that fails the version check, like Ubuntu 22.04's 3.10."""
    fake = folder / "python3"
    fake.write_text("#!/bin/sh\necho 'Python 3.10.12'\nexit 1\n")
    fake.chmod(0o755)
    return fake


def _version_ok(python: str, path: str) -> bool:
    check = "import sys; sys.exit(sys.version_info < (3, 11))"
    return subprocess.run(["env", f"PATH={path}", python, "-c", check], check=False).returncode == 0


def test_a_too_old_python3_is_passed_over(tmp_path: Path) -> None:
    old = _old_python(tmp_path)
    path = f"{tmp_path}:/usr/local/bin:/usr/bin:/bin"
    found = _find_python(path)
    assert found.returncode == 0, found.stderr
    chosen = found.stdout.strip()
    assert chosen in {"python3.13", "python3.12", "python3.11"}
    assert _version_ok(chosen, path)
    assert not _version_ok(str(old), path)


def test_python_from_the_environment_wins_when_recent_enough(tmp_path: Path) -> None:
    old = _old_python(tmp_path)
    found = _find_python("/usr/local/bin:/usr/bin:/bin", sys.executable)  # this very 3.11+
    assert found.stdout.strip() == sys.executable
    passed_over = _find_python(f"{tmp_path}:/usr/local/bin:/usr/bin:/bin", str(old))
    assert passed_over.stdout.strip() != str(old)
