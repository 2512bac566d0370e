"""The emulator's Stripe API routes (/v1/...): auth, params, idempotency, then one state call."""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable

from flask import Blueprint, Response, current_app, request

from workshop.emulator.config import (
    RequestInfo,
)
from workshop.emulator.state import Emulator
from workshop.emulator.wire import (
    API_VERSION,
    ApiError,
    Obj,
    ParamError,
    _expand_paths,
    new_id,
    parse_params,
)

# --------------------------------------------------------------------------- HTTP layer

bp = Blueprint("checkout_emulator", __name__)


def _emulator() -> Emulator:
    return current_app.extensions["checkout_emulator"]


def _json(status: int, body: Obj, request_id: str) -> Response:
    resp = Response(json.dumps(body, indent=2), status=status, mimetype="application/json")
    resp.headers["Request-Id"] = request_id
    resp.headers["Stripe-Version"] = API_VERSION
    return resp


def _api_key() -> str:
    """Return the caller's test secret key, or raise Stripe's 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credential.strip()
    elif scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            key = base64.b64decode(credential).decode("utf-8").partition(":")[0]
        except ValueError:
            key = ""
    if not key:
        raise ApiError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )
    if not re.fullmatch(r"(sk|rk)_test_\w+", key):
        raise ApiError(
            401,
            f"Invalid API Key provided: {key[:8]}****. The checkout emulator only accepts "
            "test-mode secret keys (sk_test_...).",
        )
    return key


Handler = Callable[..., tuple[Obj, list[Obj]]]


def api_view(idempotent: bool = False) -> Callable[[Handler], Callable[..., Response]]:
    """Wrap a handler with auth, param parsing, Stripe errors, idempotency and event delivery.

    Handlers run under the emulator lock and return ``(body, events)``; events are delivered
    after the lock is released and before the response is sent.
    """

    def decorate(handler: Handler) -> Callable[..., Response]:
        @functools.wraps(handler)
        def view(**kwargs: str) -> Response:
            emu = _emulator()
            request_id = new_id("req", 14)
            source = request.form if request.method == "POST" else request.args
            pairs = list(source.items(multi=True))
            try:
                api_key = _api_key()
                params = parse_params(pairs)
            except ParamError as exc:
                return _json(400, ApiError(400, str(exc)).body(), request_id)
            except ApiError as exc:
                return _json(exc.status, exc.body(), request_id)
            key = request.headers.get("Idempotency-Key") if idempotent else None
            fingerprint = json.dumps([request.method, request.path, sorted(pairs)])
            replayed = False
            with emu.lock:
                events = emu.expire_due()
                stored = emu.idempotency.get((api_key, key)) if key else None
                if stored and stored[0] == fingerprint:
                    _, status, body = stored
                    replayed = True
                elif stored:
                    status, body = (
                        400,
                        ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{key}' if you meant to execute a different request.",
                            type_="idempotency_error",
                        ).body(),
                    )
                else:
                    try:
                        body, new_events = handler(
                            emu, params, RequestInfo(request_id, key), **kwargs
                        )
                        status = 200
                        events.extend(new_events)
                    except ApiError as exc:
                        status, body = exc.status, exc.body()
                        events.extend(getattr(exc, "events", []))  # a decline's events
                    if key:
                        emu.idempotency[(api_key, key)] = (fingerprint, status, body)
            emu.deliver(events)
            resp = _json(status, body, request_id)
            if replayed:
                resp.headers["Idempotent-Replayed"] = "true"
            return resp

        return view

    return decorate


@bp.post("/v1/checkout/sessions")
@api_view(idempotent=True)
def create_session(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    session = emu.create_session(params)
    return emu.render(session, _expand_paths(params)), []


@bp.get("/v1/checkout/sessions")
@api_view()
def list_sessions(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    return emu.render(emu.list_sessions(params), _expand_paths(params)), []


@bp.get("/v1/checkout/sessions/<session_id>")
@api_view()
def get_session(
    emu: Emulator, params: Obj, info: RequestInfo, session_id: str
) -> tuple[Obj, list[Obj]]:
    return emu.render(emu.get("checkout.session", session_id), _expand_paths(params)), []


@bp.get("/v1/checkout/sessions/<session_id>/line_items")
@api_view()
def get_line_items(
    emu: Emulator, params: Obj, info: RequestInfo, session_id: str
) -> tuple[Obj, list[Obj]]:
    return emu.line_items_list(session_id, params), []


@bp.post("/v1/checkout/sessions/<session_id>/expire")
@api_view(idempotent=True)
def expire_session(
    emu: Emulator, params: Obj, info: RequestInfo, session_id: str
) -> tuple[Obj, list[Obj]]:
    session, events = emu.expire_session(session_id, info)
    return emu.render(session, _expand_paths(params)), events


def _getter(kind: str) -> Handler:
    def handler(
        emu: Emulator, params: Obj, info: RequestInfo, object_id: str
    ) -> tuple[Obj, list[Obj]]:
        return emu.render(emu.get(kind, object_id), _expand_paths(params)), []

    handler.__name__ = f"get_{kind}"
    return handler


for _kind, _rule in (
    ("payment_intent", "/v1/payment_intents/<object_id>"),
    ("charge", "/v1/charges/<object_id>"),
    ("refund", "/v1/refunds/<object_id>"),
    ("event", "/v1/events/<object_id>"),
):
    bp.get(_rule)(api_view()(_getter(_kind)))


@bp.get("/v1/events")
@api_view()
def list_events(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    return emu.list_events(params), []


@bp.post("/v1/refunds")
@api_view(idempotent=True)
def create_refund(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    refund, events = emu.refund(params, info)
    return emu.render(refund, _expand_paths(params)), events


@bp.post("/v1/customers")
@api_view(idempotent=True)
def create_customer(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    return emu.create_customer(params), []


@bp.get("/v1/payment_methods")
@api_view()
def list_payment_methods(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    return emu.list_payment_methods(params), []


@bp.post("/v1/payment_methods/<pm_id>/detach")
@api_view(idempotent=True)
def detach_payment_method(
    emu: Emulator, params: Obj, info: RequestInfo, pm_id: str
) -> tuple[Obj, list[Obj]]:
    return emu.detach(pm_id), []


@bp.post("/v1/payment_intents")
@api_view(idempotent=True)
def create_payment_intent(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    intent, events = emu.create_intent(params, info)
    return emu.render(intent, _expand_paths(params)), events
