/*
 * 0003 — Stripe payments, the webhook inbox and the token ledger.
 *
 * One payment is one Stripe PaymentIntent. Both webhook paths (checkout.session.* and
 * payment_intent.succeeded) meet on tokenbill.payments.payment_intent_id, which is what makes
 * the grant happen once per payment whichever event arrives first.
 */

-- ============================================================================================
-- Checkout Sessions we created (recorded before redirecting the user to Stripe)
-- ============================================================================================
create table tokenbill.checkout_sessions (
    id                 text primary key,
    user_id            uuid not null references tokenbill.users (id),
    package_code       text not null references tokenbill.packages (code),
    amount_cents       integer not null,
    currency           text not null,
    tokens             integer not null,
    status             text not null default 'open' check (status in ('open', 'complete', 'expired')),
    payment_status     text,
    payment_intent_id  text,
    url                text,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);
create index checkout_sessions_user_idx on tokenbill.checkout_sessions (user_id, created_at desc);
create index checkout_sessions_created_idx on tokenbill.checkout_sessions (created_at desc);

comment on table tokenbill.checkout_sessions is 'Checkout Sessions tokenbill created: who started it and for which package.';

-- ============================================================================================
-- Payments: one row per PaymentIntent, whatever events told us about it
-- ============================================================================================
create table tokenbill.payments (
    id                   bigint generated always as identity primary key,
    payment_intent_id    text not null unique,
    checkout_session_id  text unique,
    user_id              uuid references tokenbill.users (id),
    package_code         text references tokenbill.packages (code),
    amount_cents         integer,
    currency             text,
    status               text not null default 'pending'
                         check (status in ('pending', 'granted', 'rejected', 'failed')),
    reason               text,
    tokens_granted       integer not null default 0 check (tokens_granted >= 0),
    tokens_clawed        integer not null default 0 check (tokens_clawed between 0 and tokens_granted),
    refunded_cents       integer not null default 0 check (refunded_cents >= 0),
    charge_id            text,
    receipt_url          text,
    granted_at           timestamptz,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now()
);
create index payments_user_idx on tokenbill.payments (user_id, created_at desc);
create index payments_charge_idx on tokenbill.payments (charge_id);
create index payments_attention_idx on tokenbill.payments (created_at desc) where status in ('rejected', 'failed');

comment on table tokenbill.payments is 'One row per Stripe PaymentIntent. status = granted is terminal; rejected keeps the reason for admins.';
comment on column tokenbill.payments.tokens_clawed is 'Tokens taken back so far for refunds and open disputes.';

-- ============================================================================================
-- Disputes
-- ============================================================================================
create table tokenbill.disputes (
    id            text primary key,
    payment_id    bigint not null references tokenbill.payments (id),
    amount_cents  integer not null check (amount_cents >= 0),
    status        text not null,
    reason        text,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create index disputes_payment_idx on tokenbill.disputes (payment_id);

comment on table tokenbill.disputes is 'Chargebacks and inquiries. Open or lost disputes hold back tokens; won ones give them back.';

-- ============================================================================================
-- Stripe events inbox
-- ============================================================================================
create table tokenbill.stripe_events (
    id            text primary key,
    type          text not null,
    livemode      boolean,
    api_version   text,
    payload       jsonb not null,
    received_at   timestamptz not null default now(),
    processed_at  timestamptz,
    outcome       text not null check (outcome in ('received', 'processed', 'ignored', 'rejected', 'failed')),
    detail        text,
    attempts      integer not null default 1
);
create index stripe_events_received_idx on tokenbill.stripe_events (received_at desc);
create index stripe_events_attention_idx on tokenbill.stripe_events (received_at desc)
    where outcome in ('rejected', 'failed', 'ignored');

comment on table tokenbill.stripe_events is
    'Every verified Stripe event, stored in the same transaction as its effect. A failed row is one whose effect rolled back; its retry is processed normally.';

-- ============================================================================================
-- Ledger
-- ============================================================================================
create type tokenbill.ledger_kind as enum (
    'purchase',            -- tokens bought (one per payment)
    'consumption',         -- tokens spent on an agent request (one per request id)
    'consumption_refund',  -- tokens given back because the agent request failed
    'clawback',            -- tokens taken back for a refund or dispute
    'clawback_reversal',   -- tokens given back when a dispute is won
    'admin_adjustment'     -- manual correction, with a reason
);

create table tokenbill.ledger (
    id                   bigint generated always as identity primary key,
    user_id              uuid not null references tokenbill.users (id),
    kind                 tokenbill.ledger_kind not null,
    delta                integer not null check (delta <> 0),
    balance_after        integer not null,
    request_id           text,
    payment_id           bigint references tokenbill.payments (id),
    checkout_session_id  text,
    payment_intent_id    text,
    charge_id            text,
    dispute_id           text,
    stripe_event_id      text,
    reason               text,
    actor_id             uuid references tokenbill.users (id),
    created_at           timestamptz not null default now(),
    constraint ledger_delta_sign check (
        (kind in ('purchase', 'consumption_refund', 'clawback_reversal') and delta > 0)
        or (kind in ('consumption', 'clawback') and delta < 0)
        or kind = 'admin_adjustment'),
    constraint ledger_request_id_required check (
        kind not in ('consumption', 'consumption_refund') or request_id is not null),
    constraint ledger_payment_required check (
        kind not in ('purchase', 'clawback', 'clawback_reversal') or payment_id is not null),
    constraint ledger_admin_reason_required check (
        kind <> 'admin_adjustment' or (actor_id is not null and length(btrim(reason)) > 0))
);
create index ledger_user_idx on tokenbill.ledger (user_id, id desc);
create unique index ledger_consumption_once on tokenbill.ledger (user_id, request_id) where kind = 'consumption';
create unique index ledger_release_once on tokenbill.ledger (user_id, request_id) where kind = 'consumption_refund';
create unique index ledger_purchase_once on tokenbill.ledger (payment_id) where kind = 'purchase';

comment on table tokenbill.ledger is 'One immutable row per token movement. UPDATE, DELETE and TRUNCATE are refused by triggers.';
comment on column tokenbill.ledger.balance_after is 'The user''s balance right after this movement.';

/** Refuse any change to a ledger row: corrections are new rows. */
create function tokenbill.forbid_ledger_change() returns trigger
language plpgsql set search_path = '' as $$
begin
    raise exception 'the ledger is append-only (% refused)', tg_op using errcode = 'TB001';
end
$$;

create trigger ledger_append_only
    before update or delete on tokenbill.ledger
    for each row execute function tokenbill.forbid_ledger_change();

create trigger ledger_no_truncate
    before truncate on tokenbill.ledger
    for each statement execute function tokenbill.forbid_ledger_change();
