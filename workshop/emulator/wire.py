"""Stripe's wire format as the emulator speaks it: ids, amounts, nested form params, errors."""

from __future__ import annotations

import logging
import re
import secrets
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import stripe

log = logging.getLogger("tokenbill.checkout_emulator")

DEFAULT_PORT = 12112
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:5000/api/webhook/stripe"
DEFAULT_WEBHOOK_SECRET = "whsec_emulator_local"
API_VERSION = stripe.api_version
TEMPLATES = Path(__file__).resolve().parent / "templates"

SESSION_LIFETIME = 24 * 3600
# The event types docs/stripe.md tells operators to select for the app's webhook endpoint.
# Like Stripe, the emulator creates every event (GET /v1/events lists them) but delivers only
# the types the endpoint listens to, so the admin inbox is not filled with ignored events.
DEFAULT_ENABLED_EVENTS = frozenset(
    """checkout.session.completed checkout.session.async_payment_succeeded
    checkout.session.async_payment_failed checkout.session.expired payment_intent.succeeded
    payment_intent.payment_failed charge.succeeded charge.refunded charge.dispute.created
    charge.dispute.closed""".split()  # noqa: SIM905
)

Obj = dict[str, Any]


# --------------------------------------------------------------------------- small helpers


def new_id(prefix: str, length: int = 24) -> str:
    """Return a Stripe-looking id such as ``cs_test_a1B2...``."""
    alphabet = string.ascii_letters + string.digits
    return f"{prefix}_" + "".join(secrets.choice(alphabet) for _ in range(length))


_ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def format_amount(amount: int, currency: str) -> str:
    """Format integer minor units for people (500, "usd" -> "$5.00")."""
    if currency in _ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    major = f"{amount // 100:,}.{amount % 100:02d}"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{major}" if symbol else f"{major} {currency.upper()}"


# --------------------------------------------------------------------------- request params


class ParamError(ValueError):
    """A form key or value that Stripe's encoding cannot produce."""


_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")


def split_key(key: str) -> list[str]:
    """Split ``a[b][0][]`` into ``["a", "b", "0", ""]``."""
    match = _KEY_RE.fullmatch(key)
    if not match:
        raise ParamError(f"Invalid parameter name: {key!r}")
    return [match.group(1), *_SEGMENT_RE.findall(match.group(2))]


def parse_params(
    pairs: Iterable[tuple[str, str]], keep_dicts: frozenset[str] = frozenset({"metadata"})
) -> Obj:
    """Turn Stripe's form encoding into nested dicts and lists.

    stripe-python sends ``line_items[0][price_data][unit_amount]=500`` and ``expand[0]=x``;
    curl users write ``expand[]=x``. Dicts whose keys are all indices become lists, except
    under ``keep_dicts`` keys (metadata may legitimately have keys like "0").
    """
    root: Obj = {}
    for key, value in pairs:
        segments = split_key(key)
        if "" in segments[:-1]:
            raise ParamError(f"Invalid parameter name: {key!r} ('[]' must come last)")
        appending = segments[-1] == ""
        path = segments[:-1] if appending else segments
        node = root
        for segment in path[:-1]:
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise ParamError(f"Conflicting values for parameter {key!r}")
            node = child
        leaf = path[-1]
        if appending:
            items = node.setdefault(leaf, [])
            if not isinstance(items, list):
                raise ParamError(f"Conflicting values for parameter {key!r}")
            items.append(value)
        else:
            if isinstance(node.get(leaf), dict | list):
                raise ParamError(f"Conflicting values for parameter {key!r}")
            node[leaf] = value
    return _listify(root, None, keep_dicts)


def _listify(node: Any, key: str | None, keep_dicts: frozenset[str]) -> Any:
    """Convert index-keyed dicts into lists, depth first."""
    if isinstance(node, list):
        return [_listify(item, None, keep_dicts) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v, k, keep_dicts) for k, v in node.items()}
    if converted and key not in keep_dicts and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered in Stripe's JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> Obj:
        """Return ``{"error": {...}}`` like Stripe."""
        error = {"type": self.type, "message": self.message, "code": self.code, "param": self.param}
        return {"error": {k: v for k, v in error.items() if v is not None}}


def _missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="parameter_invalid", param=param)


def _not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def _as_int(value: Any, param: str, minimum: int | None = None) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(param, f"Invalid integer: {value}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise _invalid(param, f"Invalid {param}: must be at least {minimum}")
    return number


def _as_str(value: Any, param: str, max_length: int = 5000) -> str:
    if not isinstance(value, str):
        raise _invalid(param, f"Invalid string: {param} must be a string")
    if len(value) > max_length:
        raise _invalid(param, f"Invalid {param}: must be at most {max_length} characters")
    return value


def _as_dict(value: Any, param: str) -> Obj:
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid(param, f"Invalid object: {param} must be a hash")
    return value


def _as_url(value: Any, param: str) -> str:
    url = _as_str(value, param, 2048)
    if not re.match(r"https?://[^\s/]+", url):
        raise _invalid(param, f"Not a valid URL: {param}")
    return url


def _metadata(value: Any, param: str) -> dict[str, str]:
    """Validate metadata like Stripe: 50 keys, 40-char keys, 500-char string values."""
    data = _as_dict(value, param)
    if len(data) > 50:
        raise _invalid(param, "Metadata can have at most 50 keys")
    out: dict[str, str] = {}
    for key, item in data.items():
        if len(key) > 40:
            raise _invalid(f"{param}[{key}]", "Metadata keys can be at most 40 characters")
        text = _as_str(item, f"{param}[{key}]", 500)
        if text != "":  # an empty value unsets the key in Stripe
            out[key] = text
    return out


def _expand_paths(params: Obj) -> list[str]:
    value = params.get("expand", [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _invalid("expand", "Invalid array: expand must be a list of strings")
    return values


def _created_matches(created: int, condition: Any) -> bool:
    """Apply Stripe's ``created`` list filter (an int or gt/gte/lt/lte)."""
    if isinstance(condition, str):
        return created == _as_int(condition, "created")
    checks = {
        "gt": lambda bound: created > bound,
        "gte": lambda bound: created >= bound,
        "lt": lambda bound: created < bound,
        "lte": lambda bound: created <= bound,
    }
    for op, value in _as_dict(condition, "created").items():
        if op not in checks:
            raise ApiError(
                400, f"Received unknown parameter: created[{op}]", param=f"created[{op}]"
            )
        if not checks[op](_as_int(value, f"created[{op}]")):
            return False
    return True


def _parse_expiry(text: str) -> tuple[int, int] | None:
    """Parse "MM / YY", "MM/YYYY" or "MMYY" into (year, month)."""
    match = re.fullmatch(r"(\d{1,2})\s*/?\s*(\d{2}|\d{4})", text.strip())
    if not match:
        return None
    month, year = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        return None
    return (year + 2000 if year < 100 else year, month)
