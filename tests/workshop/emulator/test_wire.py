"""Stripe's wire format as the emulator parses it: nested form params, amounts."""

from __future__ import annotations

import pytest
import stripe

from workshop.emulator.wire import ParamError, format_amount, parse_params, split_key

# --------------------------------------------------------------------------- parser units


def test_split_key_handles_brackets() -> None:
    assert split_key("line_items[0][price_data][unit_amount]") == [
        "line_items",
        "0",
        "price_data",
        "unit_amount",
    ]
    assert split_key("expand[]") == ["expand", ""]
    assert split_key("mode") == ["mode"]


@pytest.mark.parametrize("key", ["", "[a]", "a[b", "a]b", "a[b]c", "a[[b]]"])
def test_split_key_rejects_malformed_names(key: str) -> None:
    with pytest.raises(ParamError):
        split_key(key)


def test_parse_params_builds_nested_lists_and_dicts() -> None:
    pairs = [
        ("mode", "payment"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "500"),
        ("line_items[0][price_data][product_data][name]", "100 tokens"),
        ("line_items[0][quantity]", "1"),
        ("line_items[1][price]", "price_x"),
        ("line_items[1][quantity]", "2"),
        ("metadata[user_id]", "u1"),
        ("payment_intent_data[metadata][package]", "tokens_100"),
        ("expand[0]", "payment_intent"),
        ("expand[1]", "payment_intent.latest_charge"),
        ("created[gte]", "17"),
    ]
    assert parse_params(pairs) == {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "500",
                    "product_data": {"name": "100 tokens"},
                },
                "quantity": "1",
            },
            {"price": "price_x", "quantity": "2"},
        ],
        "metadata": {"user_id": "u1"},
        "payment_intent_data": {"metadata": {"package": "tokens_100"}},
        "expand": ["payment_intent", "payment_intent.latest_charge"],
        "created": {"gte": "17"},
    }


def test_parse_params_orders_indices_numerically_and_appends_brackets() -> None:
    pairs = [("a[10]", "ten"), ("a[2]", "two"), ("expand[]", "x"), ("expand[]", "y")]
    assert parse_params(pairs) == {"a": ["two", "ten"], "expand": ["x", "y"]}


def test_parse_params_keeps_numeric_metadata_keys_as_a_dict() -> None:
    pairs = [("metadata[0]", "zero"), ("payment_intent_data[metadata][1]", "one")]
    assert parse_params(pairs) == {
        "metadata": {"0": "zero"},
        "payment_intent_data": {"metadata": {"1": "one"}},
    }


def test_parse_params_round_trips_what_stripe_python_sends() -> None:
    params = {
        "line_items": [{"price_data": {"unit_amount": 500, "currency": "usd"}, "quantity": 1}],
        "metadata": {"user_id": "u"},
        "expand": ["payment_intent"],
        "flag": True,
    }
    pairs = [(k, str(v)) for k, v in stripe._encode._api_encode(params)]
    assert parse_params(pairs) == {
        "line_items": [{"price_data": {"unit_amount": "500", "currency": "usd"}, "quantity": "1"}],
        "metadata": {"user_id": "u"},
        "expand": ["payment_intent"],
        "flag": "true",
    }


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "2"), ("a", "1")],
        [("a[]", "1"), ("a[0]", "2")],
        [("a[0]", "1"), ("a[]", "2")],
        [("a[][b]", "1")],
    ],
)
def test_parse_params_rejects_conflicting_shapes(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ParamError):
        parse_params(pairs)


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (500, "usd", "$5.00"),
        (123456, "eur", "€1,234.56"),
        (500, "jpy", "500 JPY"),
        (7, "chf", "0.07 CHF"),
    ],
)
def test_format_amount(amount: int, currency: str, text: str) -> None:
    assert format_amount(amount, currency) == text
