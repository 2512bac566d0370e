"""docs/security.md names, for each threat, tests that exist: the table cannot rot silently."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"


def test_every_test_the_threat_model_names_exists():
    text = DOC.read_text()
    current_file = None
    named = 0
    for match in re.finditer(r"`(tests/[\w/]+\.py)?(?:::)?(\w+)?`", text):
        path, name = match.groups()
        if path:
            current_file = ROOT / path
            assert current_file.exists(), path
        if name and name.startswith("test_"):
            assert current_file is not None
            assert re.search(rf"^def {name}\(", current_file.read_text(), re.M), (
                f"{current_file.name}::{name}"
            )
            named += 1
    assert named >= 20
