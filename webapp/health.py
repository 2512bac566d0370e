"""Liveness with a real database round trip, for load balancers and the run script."""

from __future__ import annotations

import psycopg
from flask import Blueprint, jsonify
from psycopg_pool import PoolTimeout

from .db import get_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 when PostgreSQL answers and the migrations are applied, else 503."""
    try:
        row = get_db().fetch_one("select count(*) as packages from api.packages")
    except (psycopg.Error, PoolTimeout) as exc:
        return jsonify(status="unavailable", database=type(exc).__name__), 503
    return jsonify(status="ok", database="ok", packages=row["packages"] if row else 0)
