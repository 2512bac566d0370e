"""0032: Stripe event payloads are compressed with lz4, not pglz (the default)."""

from __future__ import annotations

import json

from tests.support import stripe_events as ev


def test_the_payload_column_compresses_with_lz4(owner):
    row = owner.execute(
        "select attcompression as method from pg_attribute"
        " where attrelid = 'tokenbill.stripe_events'::regclass and attname = 'payload'"
    ).fetchone()
    assert row["method"] == "l"


def test_a_real_event_is_stored_compressed_with_lz4(owner):
    """A captured Stripe event (2.8 kB) is past the size at which a row's values are
    compressed: what each delivery pays is lz4's compression."""
    evt = ev.shared_fixture("payment_intent.payment_failed")
    evt["id"] = ev.new_id("evt")
    owner.execute("select * from api.handle_stripe_event(%s::jsonb, false)", [json.dumps(evt)])
    row = owner.execute(
        "select pg_column_compression(payload) as method from tokenbill.stripe_events"
        " where id = %s",
        [evt["id"]],
    ).fetchone()
    assert row["method"] == "lz4"
