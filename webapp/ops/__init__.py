"""Operator commands' code, run as ``flask --app webapp <command>`` (see webapp/cli.py)."""
