"""Send a correctly signed Stripe test event to a tokenbill webhook (like ``stripe trigger``).

    python -m workshop.send_event checkout.session.completed \\
        --url http://127.0.0.1:5000/api/webhook/stripe --user-id <uuid> --package tokens_100

The secret defaults to STRIPE_WEBHOOK_SECRET (from the environment, else the checkout's .env,
read without changing the environment). Use the same --payment-intent (and --charge) on
later events (payment_intent.succeeded, charge.refunded, charge.dispute.*) to follow one payment.
Exit status: 0 when the webhook answered 2xx, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import requests
from dotenv import dotenv_values
from flask.helpers import get_load_dotenv

from webapp import DOTENV
from webapp.signing import signature_header as sign
from workshop.stripe_fixtures import DEFAULT_AMOUNTS, HANDLED_TYPES, build, encode, new_id

DEFAULT_URL = "http://127.0.0.1:5000/api/webhook/stripe"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workshop.send_event",
        description="Send a signed Stripe test event to the tokenbill webhook.",
    )
    parser.add_argument(
        "type", choices=HANDLED_TYPES, metavar="TYPE", help=", ".join(HANDLED_TYPES)
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"webhook URL (default {DEFAULT_URL})")
    parser.add_argument("--user-id", default="", help="the tokenbill user id (metadata.user_id)")
    parser.add_argument("--package", default="tokens_100", help="package code (metadata.package)")
    parser.add_argument(
        "--amount", type=int, help="amount in cents (default: the package's usual price)"
    )
    parser.add_argument("--payment-intent", help="PaymentIntent id (default: a new one)")
    parser.add_argument("--session", help="Checkout Session id (default: a new one)")
    parser.add_argument("--charge", help="charge id (default: a new one)")
    parser.add_argument(
        "--refunded", type=int, help="charge.refunded: total refunded cents (default: all)"
    )
    parser.add_argument("--dispute-id", help="charge.dispute.*: dispute id (default: a new one)")
    parser.add_argument(
        "--dispute-status",
        help="charge.dispute.*: status (default needs_response; closed: lost)",
    )
    parser.add_argument("--secret", help="webhook signing secret (default: $STRIPE_WEBHOOK_SECRET)")
    parser.add_argument("--dry-run", action="store_true", help="print the event, do not send")
    return parser.parse_args(argv)


def _default_secret() -> str:
    """STRIPE_WEBHOOK_SECRET from the environment, else from `.env` (unless FLASK_SKIP_DOTENV),
    without loading `.env` into os.environ: a caller in the same process (the test suite) must
    not find the dev database's URLs there afterwards."""
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
    if not secret and get_load_dotenv() and DOTENV.exists():
        secret = dotenv_values(DOTENV).get("STRIPE_WEBHOOK_SECRET") or ""
    return secret


def main(argv: Sequence[str] | None = None) -> int:
    """Build, sign and POST one event; print the webhook's answer."""
    args = parse_args(argv)
    secret = args.secret or _default_secret()
    if not secret and not args.dry_run:
        print("error: no signing secret (--secret or STRIPE_WEBHOOK_SECRET)", file=sys.stderr)
        return 2
    if args.amount is None and args.package not in DEFAULT_AMOUNTS:
        print(f"error: --amount is required for package {args.package!r}", file=sys.stderr)
        return 2

    evt = build(
        args.type,
        user_id=args.user_id,
        package=args.package,
        amount=args.amount,
        pi=args.payment_intent or new_id("pi"),
        cs=args.session,
        charge=args.charge or new_id("ch"),
        refunded=args.refunded,
        dispute_status=args.dispute_status,
        dispute_id=args.dispute_id,
    )
    body = encode(evt)
    if args.dry_run:
        print(json.dumps(evt, indent=2))
        return 0

    try:
        response = requests.post(
            args.url,
            data=body,
            headers={"Stripe-Signature": sign(body, secret), "Content-Type": "application/json"},
            timeout=30,
        )
    except requests.RequestException as exc:
        print(f"error: could not reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{evt['type']} {evt['id']} -> HTTP {response.status_code} {response.text.strip()}")
    return 0 if response.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
