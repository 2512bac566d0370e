/*
 * 0032 — Stripe event payloads are compressed with lz4 (issue 16: the webhook grant).
 *
 * Every delivery stores its whole event in tokenbill.stripe_events.payload. Real events are
 * 2–5 kB of JSON (a checkout session or a payment intent with its nested objects), past the
 * 2 kB at which PostgreSQL compresses a row's large values, so each webhook compressed its
 * payload with pglz, the default: several times slower than lz4 to compress and to read back
 * (the admin's event pages) for about the same size. Only values written from now on use
 * lz4 (no rewrite, a brief catalog lock). A server built without lz4 keeps pglz and says so.
 */
do $$
begin
    alter table tokenbill.stripe_events alter column payload set compression lz4;
exception when feature_not_supported then
    raise notice '0032: this server has no lz4; stripe_events.payload stays pglz';
end
$$;

comment on column tokenbill.stripe_events.payload is
    'The event as Stripe sent it (verified by the app); compressed with lz4 when large (0032).';
