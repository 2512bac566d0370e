"""Fill in settings in .env that the user has not set, never touching those they have.

Why: scripts/run picks the embedded database and a dev SECRET_KEY for the server it starts;
the operator commands (``flask --app webapp create-admin``) run later in another shell and
read only the environment and .env. Writing what scripts/run chose into .env makes them
work there too. A value the user wrote always wins; an empty assignment copied from
.env.example counts as unset and is filled in place.

CLI (used by scripts/run)::

    python -m workshop.envfile [--file .env] KEY=VALUE...   # prints the keys it wrote
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

HEADER = "# Written by scripts/run for this checkout; edit or remove freely (it never overwrites)."


def _format(key: str, value: str) -> str:
    """KEY=VALUE, quoted when needed so that bash and python-dotenv read the same value.

    Single quotes mean the same to both, except for ' and \\ inside them (dotenv unescapes,
    bash does not): such values are refused rather than read differently by the two.
    """
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./~-]*", value):
        return f"{key}={value}"
    if "'" in value or "\\" in value or "\n" in value:
        raise ValueError(f"{key}: a value with quotes, backslashes or newlines is not portable")
    return f"{key}='{value}'"


def set_defaults(path: Path, values: Mapping[str, str]) -> list[str]:
    """Write each KEY=VALUE that the file leaves unset or empty; return the keys written.

    The caller decides about the environment (scripts/run only asks for what it had to pick).
    """
    existing = dotenv_values(path) if path.exists() else {}
    wanted = {key: value for key, value in values.items() if not existing.get(key)}
    if not wanted:
        return []
    lines = path.read_text().splitlines() if path.exists() else []
    written: list[str] = []
    for index, line in enumerate(lines):  # fill empty assignments where they stand
        match = re.fullmatch(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(''|\"\")?\s*", line)
        if match and match.group(1) in wanted and match.group(1) not in written:
            key = match.group(1)
            lines[index] = _format(key, wanted[key])
            written.append(key)
    appended = [key for key in wanted if key not in written]
    if appended:
        lines += ["", HEADER] if lines else [HEADER]
        lines += [_format(key, wanted[key]) for key in appended]
    # The file holds a secret key: readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return written + appended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshop.envfile", description=__doc__)
    parser.add_argument("--file", type=Path, default=Path(".env"))
    parser.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    values = dict(pair.split("=", 1) for pair in args.pairs)
    for key in set_defaults(args.file, values):
        print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
