"""A local stand-in for Stripe-hosted Checkout, for offline development and browser tests.

Why this exists: stripe-mock is stateless and sends no webhooks, and real Stripe needs network
and keys. This small Flask app keeps Checkout Sessions, PaymentIntents, Charges, Refunds and
Events in memory, speaks Stripe's wire format (form-encoded nested params in, JSON objects and
Stripe-shaped errors out), serves a simulated hosted pay page, and delivers webhooks signed
exactly like Stripe's, so the app's real Checkout and webhook code runs end to end.

It is a development tool: the production app never imports it (it lives in the workshop).

CLI::

    python -m workshop.emulator [--host 127.0.0.1] [--port 12112]
        [--webhook-url http://127.0.0.1:5000/api/webhook/stripe] [--public-url URL]
        [--price price_x=500:usd:Name ...]

The webhook signing secret comes from STRIPE_WEBHOOK_SECRET (default whsec_emulator_local).
"""

from __future__ import annotations

import argparse
import logging
import os
import re

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from workshop.emulator import pages  # noqa: F401  (registers the pages on bp)
from workshop.emulator.api import _json, bp
from workshop.emulator.config import (
    EmulatorConfig,
)
from workshop.emulator.state import Emulator
from workshop.emulator.wire import (
    DEFAULT_ENABLED_EVENTS,
    DEFAULT_PORT,
    DEFAULT_WEBHOOK_SECRET,
    DEFAULT_WEBHOOK_URL,
    TEMPLATES,
    ApiError,
    Obj,
    format_amount,
    log,
    new_id,
)
from workshop.net import serve_wsgi


def create_app(emulator: Emulator) -> Flask:
    """Build the emulator's Flask app around an Emulator (separate from webapp)."""
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.extensions["checkout_emulator"] = emulator
    app.jinja_env.filters["money"] = lambda amount, currency: format_amount(amount, currency)
    app.register_blueprint(bp)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if request.path.startswith("/v1/"):
            error = ApiError(
                exc.code or 500,
                f"Unrecognized request URL ({request.method}: {request.path}).",
            )
            return _json(error.status, error.body(), new_id("req", 14))
        return exc.get_response()

    return app


class EmulatorServer:
    """Run the emulator on a background thread, e.g. in tests: ``with EmulatorServer(...) as s``."""

    def __init__(self, config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = Emulator(config)
        self.app = create_app(self.emulator)
        self._serving = serve_wsgi(self.app, host, port)
        self.server = self._serving.server
        self.url = self._serving.url
        if not config.public_url:
            config.public_url = self.url

    def __enter__(self) -> EmulatorServer:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()


def _price_arg(text: str) -> tuple[str, Obj]:
    """Parse ``price_x=500:usd:100 tokens`` (a --price option)."""
    match = re.fullmatch(r"(price_\w+)=(\d+):([a-zA-Z]{3}):(.+)", text)
    if not match:
        raise argparse.ArgumentTypeError("expected price_ID=AMOUNT:CURRENCY:NAME")
    price_id, amount, currency, name = match.groups()
    return price_id, {"unit_amount": int(amount), "currency": currency.lower(), "name": name}


def _enabled_events_arg(text: str) -> frozenset[str] | None:
    """Parse ``--enabled-events``: ``*`` (every type) or ``a.b,c.d``."""
    if text.strip() == "*":
        return None
    types = frozenset(t.strip() for t in text.split(",") if t.strip())
    if not types:
        raise argparse.ArgumentTypeError("expected '*' or comma-separated event types")
    return types


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser (docker-compose.yml and scripts/run pass these flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in docker)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--webhook-url",
        default=DEFAULT_WEBHOOK_URL,
        help="where events are POSTed; an empty string disables delivery",
    )
    parser.add_argument(
        "--public-url", help="base URL browsers use for pay and receipt pages (default: own URL)"
    )
    parser.add_argument("--webhook-attempts", type=int, default=4)
    parser.add_argument(
        "--enabled-events",
        type=_enabled_events_arg,
        default=DEFAULT_ENABLED_EVENTS,
        help="comma-separated event types to deliver, or '*' for all "
        "(default: the ones docs/stripe.md selects)",
    )
    parser.add_argument(
        "--price", type=_price_arg, action="append", default=[], help="price_ID=AMOUNT:CUR:NAME"
    )
    parser.add_argument("--seed", type=int, help="seed the event order shuffle")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
    if not secret:
        secret = DEFAULT_WEBHOOK_SECRET
        log.warning(
            "STRIPE_WEBHOOK_SECRET is not set: signing webhooks with the documented default"
        )
    # A wildcard bind address is no URL a browser can open: pages then say 127.0.0.1.
    own_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    config = EmulatorConfig(
        public_url=(args.public_url or f"http://{own_host}:{args.port}").rstrip("/"),
        webhook_url=args.webhook_url or None,
        webhook_secret=secret,
        webhook_attempts=args.webhook_attempts,
        enabled_events=args.enabled_events,
        prices=dict(args.price),
        seed=args.seed,
    )
    emulator = Emulator(config)
    server = make_server(args.host, args.port, create_app(emulator), threaded=True)
    log.info(
        "checkout emulator on http://%s:%d (pages at %s), webhooks to %s",
        args.host,
        server.server_port,
        config.public_url,
        config.webhook_url or "(disabled)",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
