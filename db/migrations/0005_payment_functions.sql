/*
 * 0005 — granting, refunds, disputes and the Stripe event dispatcher.
 *
 * api.handle_stripe_event(event) is the whole webhook: store the event (deduplicated on its
 * id) and apply its effect in the caller's transaction. Flask calls it after verifying the
 * signature; a Supabase Edge Function can call it the same way through RPC.
 */

-- ============================================================================================
-- Small helpers for reading Stripe JSON
-- ============================================================================================
/** The id of an expandable Stripe field, whether it arrived as an id or an expanded object. */
create function tokenbill.stripe_id(p_value jsonb) returns text
language sql immutable set search_path = '' as $$
    select case jsonb_typeof(p_value)
               when 'string' then p_value #>> '{}'
               when 'object' then p_value ->> 'id'
           end;
$$;

/** An integer from Stripe JSON, or NULL when absent or not an integer (never an error). */
create function tokenbill.stripe_int(p_value jsonb) returns integer
language sql immutable set search_path = '' as $$
    select case when jsonb_typeof(p_value) = 'number' and (p_value #>> '{}') ~ '^-?[0-9]{1,9}$'
                then (p_value #>> '{}')::integer end;
$$;

/** A user id as uuid, or NULL when it is not a well-formed uuid. */
create function tokenbill.to_uuid(p_value text) returns uuid
language sql immutable set search_path = '' as $$
    select case when p_value ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                then p_value::uuid end;
$$;

/** The payments row for a PaymentIntent, created as 'pending' if no event has named it yet. */
create function tokenbill.payment_row(p_payment_intent_id text, p_charge_id text default null)
returns tokenbill.payments
language plpgsql set search_path = '' as $$
declare
    v_pay tokenbill.payments;
begin
    if p_payment_intent_id is null then
        select * into v_pay from tokenbill.payments where charge_id = p_charge_id for update;
        return v_pay;  -- all NULL when unknown
    end if;
    insert into tokenbill.payments as p (payment_intent_id, charge_id)
    values (p_payment_intent_id, p_charge_id)
    on conflict (payment_intent_id) do update
        set charge_id = coalesce(p.charge_id, excluded.charge_id), updated_at = now()
    returning * into v_pay;
    return v_pay;
end
$$;

-- ============================================================================================
-- tokenbill.settle_payment — clawbacks follow the payment's refunds and disputes
-- ============================================================================================
/**
 * Bring the tokens taken back for a payment in line with its facts: ceil(tokens * refunded /
 * paid) for refunds plus the same for every dispute not won, capped at the tokens granted.
 * Posts only the difference from what was already taken back, so calling it again, or with
 * events in any order, moves nothing twice. Returns the tokens moved (negative = taken back).
 */
create function tokenbill.settle_payment(
    p_payment_id bigint, p_stripe_event_id text default null, p_dispute_id text default null)
returns integer
language plpgsql set search_path = '' as $$
declare
    v_pay tokenbill.payments;
    v_refund_target bigint;
    v_dispute_target bigint;
    v_target integer;
    v_delta integer;
begin
    select * into v_pay from tokenbill.payments where id = p_payment_id for update;
    if not found or v_pay.status <> 'granted' then
        return 0;
    end if;

    v_refund_target := (v_pay.tokens_granted::bigint * least(v_pay.refunded_cents, v_pay.amount_cents)
                        + v_pay.amount_cents - 1) / v_pay.amount_cents;
    select coalesce(sum((v_pay.tokens_granted::bigint * least(d.amount_cents, v_pay.amount_cents)
                         + v_pay.amount_cents - 1) / v_pay.amount_cents), 0)
      into v_dispute_target
      from tokenbill.disputes d
     where d.payment_id = v_pay.id and d.status not in ('won', 'warning_closed');

    v_target := least(v_pay.tokens_granted, v_refund_target + v_dispute_target);
    v_delta := v_target - v_pay.tokens_clawed;
    if v_delta = 0 then
        return 0;
    end if;

    perform tokenbill.post_entry(
        v_pay.user_id,
        case when v_delta > 0 then 'clawback' else 'clawback_reversal' end::tokenbill.ledger_kind,
        -v_delta,
        p_allow_negative => true,
        p_payment_id => v_pay.id,
        p_checkout_session_id => v_pay.checkout_session_id,
        p_payment_intent_id => v_pay.payment_intent_id,
        p_charge_id => v_pay.charge_id,
        p_dispute_id => p_dispute_id,
        p_stripe_event_id => p_stripe_event_id,
        p_reason => format('refunded %s of %s cents; %s tokens held for disputes',
                           v_pay.refunded_cents, v_pay.amount_cents, v_dispute_target));
    update tokenbill.payments set tokens_clawed = v_target, updated_at = now() where id = v_pay.id;
    return -v_delta;
end
$$;

-- ============================================================================================
-- api.grant_for_payment
-- ============================================================================================
/**
 * Credit a package to a user once per payment (PaymentIntent), whoever calls and however
 * often. The package table decides the tokens; amount and currency paid must match it, the
 * user must exist and, when tokenbill recorded the Checkout Session, match it.
 * status: 'granted' | 'already_granted' | 'rejected' (with reason; nothing credited).
 */
create function api.grant_for_payment(
    p_payment_intent_id text,
    p_user_id text,
    p_package_code text,
    p_amount_cents integer,
    p_currency text,
    p_checkout_session_id text default null,
    p_stripe_event_id text default null,
    p_charge_id text default null,
    p_receipt_url text default null
) returns table (status text, tokens integer, balance integer, reason text)
language plpgsql security definer set search_path = '' as $$
declare
    v_pay tokenbill.payments;
    v_user uuid := tokenbill.to_uuid(p_user_id);
    v_pkg tokenbill.packages;
    v_session tokenbill.checkout_sessions;
    v_reason text;
    v_balance integer;
begin
    if p_payment_intent_id is null or length(p_payment_intent_id) = 0 then
        raise exception 'a payment intent id is required' using errcode = 'TB003';
    end if;

    -- The upsert locks the payment's row: concurrent grants for one payment queue here.
    insert into tokenbill.payments as p (payment_intent_id, checkout_session_id, charge_id, receipt_url)
    values (p_payment_intent_id, p_checkout_session_id, p_charge_id, p_receipt_url)
    on conflict (payment_intent_id) do update
        set checkout_session_id = coalesce(p.checkout_session_id, excluded.checkout_session_id),
            charge_id = coalesce(excluded.charge_id, p.charge_id),
            receipt_url = coalesce(excluded.receipt_url, p.receipt_url),
            updated_at = now()
    returning * into v_pay;

    if v_pay.status = 'granted' then
        return query select 'already_granted'::text, v_pay.tokens_granted, u.balance, null::text
                       from tokenbill.users u where u.id = v_pay.user_id;
        return;
    end if;

    if v_user is null then
        v_reason := format('missing or malformed user id %L', p_user_id);
    elsif not exists (select from tokenbill.users u where u.id = v_user) then
        v_reason := format('unknown user %s', v_user);
        v_user := null;
    end if;

    select * into v_pkg from tokenbill.packages k where k.code = p_package_code;
    if v_reason is not null then
        null;
    elsif v_pkg.code is null then
        v_reason := format('unknown package %L', p_package_code);
    elsif p_amount_cents is distinct from v_pkg.amount_cents
          or lower(p_currency) is distinct from v_pkg.currency then
        v_reason := format('amount mismatch: paid %s %s, package %s costs %s %s',
                           coalesce(p_amount_cents::text, 'unknown'), coalesce(lower(p_currency), '?'),
                           v_pkg.code, v_pkg.amount_cents, v_pkg.currency);
    end if;

    if v_reason is null and v_pay.checkout_session_id is not null then
        select * into v_session from tokenbill.checkout_sessions s where s.id = v_pay.checkout_session_id;
        if v_session.id is not null
           and (v_session.user_id <> v_user or v_session.package_code <> v_pkg.code) then
            v_reason := format('payment does not match checkout session %s (user %s, package %s)',
                               v_session.id, v_session.user_id, v_session.package_code);
        end if;
    end if;

    if v_reason is not null then
        update tokenbill.payments p
           set status = 'rejected', reason = v_reason, user_id = coalesce(v_user, p.user_id),
               package_code = coalesce(v_pkg.code, p.package_code), amount_cents = p_amount_cents,
               currency = lower(p_currency), updated_at = now()
         where p.id = v_pay.id;
        return query select 'rejected'::text, 0, null::integer, v_reason;
        return;
    end if;

    v_balance := tokenbill.post_entry(
        v_user, 'purchase', v_pkg.tokens, p_allow_negative => true,
        p_payment_id => v_pay.id,
        p_checkout_session_id => v_pay.checkout_session_id,
        p_payment_intent_id => v_pay.payment_intent_id,
        p_charge_id => coalesce(p_charge_id, v_pay.charge_id),
        p_stripe_event_id => p_stripe_event_id);
    update tokenbill.payments p
       set status = 'granted', reason = null, user_id = v_user, package_code = v_pkg.code,
           amount_cents = p_amount_cents, currency = lower(p_currency),
           tokens_granted = v_pkg.tokens, granted_at = now(), updated_at = now()
     where p.id = v_pay.id;

    -- A refund or dispute may have been reported before any grant event arrived.
    if tokenbill.settle_payment(v_pay.id, p_stripe_event_id) <> 0 then
        select u.balance into v_balance from tokenbill.users u where u.id = v_user;
    end if;
    return query select 'granted'::text, v_pkg.tokens, v_balance, null::text;
end
$$;

revoke all on function api.grant_for_payment(text, text, text, integer, text, text, text, text, text) from public;
grant execute on function api.grant_for_payment(text, text, text, integer, text, text, text, text, text) to tokenbill_app;

-- ============================================================================================
-- api.revoke_for_refund / api.revoke_for_dispute
-- ============================================================================================
/**
 * Record that a charge has been refunded p_amount_refunded cents in total (Stripe's
 * charge.amount_refunded, cumulative) and take back the matching share of tokens. Idempotent:
 * the same or an older total moves nothing. Returns the tokens taken back by this call.
 */
create function api.revoke_for_refund(
    p_payment_intent_id text, p_charge_id text, p_amount_refunded integer,
    p_stripe_event_id text default null)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_pay tokenbill.payments;
begin
    if p_amount_refunded is null or p_amount_refunded < 0 then
        raise exception 'refunded amount must be a non-negative number of cents' using errcode = 'TB003';
    end if;
    v_pay := tokenbill.payment_row(p_payment_intent_id, p_charge_id);
    if v_pay.id is null then
        raise exception 'no payment for charge %', p_charge_id using errcode = 'TB002';
    end if;
    update tokenbill.payments
       set refunded_cents = greatest(refunded_cents, p_amount_refunded), updated_at = now()
     where id = v_pay.id;
    return -tokenbill.settle_payment(v_pay.id, p_stripe_event_id);
end
$$;

revoke all on function api.revoke_for_refund(text, text, integer, text) from public;
grant execute on function api.revoke_for_refund(text, text, integer, text) to tokenbill_app;

/**
 * Record a dispute's state and hold back (or give back) the disputed share of tokens.
 * A closed dispute (won, lost, warning_closed) never reopens, whatever order events arrive in.
 * Returns the tokens moved by this call (positive = taken back).
 */
create function api.revoke_for_dispute(
    p_dispute_id text, p_payment_intent_id text, p_charge_id text, p_amount_cents integer,
    p_status text, p_reason text default null, p_stripe_event_id text default null)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_pay tokenbill.payments;
begin
    if p_dispute_id is null or p_status is null or p_amount_cents is null or p_amount_cents < 0 then
        raise exception 'a dispute needs an id, a status and an amount' using errcode = 'TB003';
    end if;
    v_pay := tokenbill.payment_row(p_payment_intent_id, p_charge_id);
    if v_pay.id is null then
        raise exception 'no payment for charge %', p_charge_id using errcode = 'TB002';
    end if;
    insert into tokenbill.disputes as d (id, payment_id, amount_cents, status, reason)
    values (p_dispute_id, v_pay.id, p_amount_cents, p_status, p_reason)
    on conflict (id) do update
        set status = case when d.status in ('won', 'lost', 'warning_closed') then d.status
                          else excluded.status end,
            amount_cents = excluded.amount_cents,
            reason = coalesce(excluded.reason, d.reason),
            updated_at = now();
    return -tokenbill.settle_payment(v_pay.id, p_stripe_event_id, p_dispute_id);
end
$$;

revoke all on function api.revoke_for_dispute(text, text, text, integer, text, text, text) from public;
grant execute on function api.revoke_for_dispute(text, text, text, integer, text, text, text) to tokenbill_app;

-- ============================================================================================
-- Checkout Sessions
-- ============================================================================================
/**
 * Record a Checkout Session tokenbill just created, with the package's terms, before the user
 * is sent to Stripe. Idempotent for the same session; refuses a session id owned by someone else.
 */
create function api.record_checkout_session(
    p_session_id text, p_user_id uuid, p_package_code text, p_url text default null)
returns void
language plpgsql security definer set search_path = '' as $$
declare
    v_pkg tokenbill.packages;
    v_owner uuid;
begin
    select * into v_pkg from tokenbill.packages where code = p_package_code;
    if not found then
        raise exception 'unknown package %', p_package_code using errcode = 'TB002';
    end if;
    insert into tokenbill.checkout_sessions (id, user_id, package_code, amount_cents, currency, tokens, url)
    values (p_session_id, p_user_id, v_pkg.code, v_pkg.amount_cents, v_pkg.currency, v_pkg.tokens, p_url)
    on conflict (id) do nothing;
    select user_id into v_owner from tokenbill.checkout_sessions where id = p_session_id;
    if v_owner <> p_user_id then
        raise exception 'checkout session % belongs to another user', p_session_id using errcode = 'TB004';
    end if;
end
$$;

revoke all on function api.record_checkout_session(text, uuid, text, text) from public;
grant execute on function api.record_checkout_session(text, uuid, text, text) to tokenbill_app;

/**
 * Fulfil a Checkout Session object (from an event, the success page or reconciliation):
 * update what we know of the session and grant when it is paid.
 * Returns (outcome, detail) as stored for events.
 */
create function tokenbill.fulfil_checkout_session(
    p_session jsonb, p_stripe_event_id text default null, p_event_type text default null)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_id text := p_session ->> 'id';
    v_pi text := tokenbill.stripe_id(p_session -> 'payment_intent');
    v_payment_status text := p_session ->> 'payment_status';
    v_charge jsonb := p_session -> 'payment_intent' -> 'latest_charge';
    v_grant record;
begin
    if v_id is null then
        raise exception 'checkout session without an id' using errcode = 'TB003';
    end if;

    update tokenbill.checkout_sessions s
       set status = case when s.status = 'open' then coalesce(p_session ->> 'status', s.status)
                         else s.status end,
           payment_status = coalesce(v_payment_status, s.payment_status),
           payment_intent_id = coalesce(v_pi, s.payment_intent_id),
           updated_at = now()
     where s.id = v_id;

    if p_event_type = 'checkout.session.expired' then
        return query select 'processed'::text, 'session expired'::text;
        return;
    end if;
    if p_event_type = 'checkout.session.async_payment_failed' then
        if v_pi is not null then
            perform tokenbill.record_payment_failure(v_pi, 'asynchronous payment failed');
        end if;
        return query select 'processed'::text, 'asynchronous payment failed; nothing granted'::text;
        return;
    end if;
    if v_payment_status = 'unpaid' then
        return query select 'processed'::text,
            'payment pending: waiting for checkout.session.async_payment_succeeded'::text;
        return;
    end if;
    if v_payment_status is distinct from 'paid' then
        return query select 'ignored'::text, format('payment_status is %s', v_payment_status);
        return;
    end if;
    if v_pi is null then
        return query select 'rejected'::text, 'paid session without a payment intent'::text;
        return;
    end if;

    select * into v_grant from api.grant_for_payment(
        v_pi,
        coalesce(p_session ->> 'client_reference_id', p_session -> 'metadata' ->> 'user_id'),
        p_session -> 'metadata' ->> 'package',
        tokenbill.stripe_int(p_session -> 'amount_total'),
        p_session ->> 'currency',
        v_id,
        p_stripe_event_id,
        tokenbill.stripe_id(v_charge),
        case when jsonb_typeof(v_charge) = 'object' then v_charge ->> 'receipt_url' end);
    return query select
        case when v_grant.status = 'rejected' then 'rejected' else 'processed' end,
        coalesce(v_grant.reason, format('%s %s tokens', v_grant.status, v_grant.tokens));
end
$$;

/** Mark a not-yet-granted payment as failed (a later success on the same intent still grants). */
create function tokenbill.record_payment_failure(p_payment_intent_id text, p_reason text)
returns void
language sql set search_path = '' as $$
    insert into tokenbill.payments as p (payment_intent_id, status, reason)
    values (p_payment_intent_id, 'failed', p_reason)
    on conflict (payment_intent_id) do update
        set status = 'failed', reason = excluded.reason, updated_at = now()
        where p.status <> 'granted';
$$;

/**
 * The success page's fulfilment: the same as the webhook's, for a session the signed-in user
 * started. A session of someone else's raises TB002, so the page shows nothing of theirs.
 */
create function api.fulfil_checkout_session(p_session jsonb, p_user_id uuid)
returns table (outcome text, detail text, payment_status text, tokens integer, balance integer,
               receipt_url text)
language plpgsql security definer set search_path = '' as $$
declare
    v_id text := p_session ->> 'id';
    v_result record;
begin
    perform from tokenbill.checkout_sessions s where s.id = v_id and s.user_id = p_user_id;
    if not found then
        raise exception 'no checkout session % for this user', v_id using errcode = 'TB002';
    end if;
    select * into v_result from tokenbill.fulfil_checkout_session(p_session);
    return query
        select v_result.outcome, v_result.detail, s.payment_status, p.tokens_granted, u.balance,
               p.receipt_url
          from tokenbill.checkout_sessions s
          join tokenbill.users u on u.id = s.user_id
          left join tokenbill.payments p on p.checkout_session_id = s.id and p.status = 'granted'
         where s.id = v_id;
end
$$;

revoke all on function api.fulfil_checkout_session(jsonb, uuid) from public;
grant execute on function api.fulfil_checkout_session(jsonb, uuid) to tokenbill_app;

-- ============================================================================================
-- Event handlers for PaymentIntents, charges and disputes
-- ============================================================================================
/** payment_intent.succeeded: grant, when its metadata says tokenbill created it. */
create function tokenbill.fulfil_payment_intent(p_intent jsonb, p_stripe_event_id text)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_meta jsonb := coalesce(p_intent -> 'metadata', '{}');
    v_charge jsonb := coalesce(p_intent -> 'latest_charge', p_intent -> 'charges' -> 'data' -> 0);
    v_grant record;
begin
    if v_meta ->> 'user_id' is null and v_meta ->> 'package' is null then
        return query select 'ignored'::text, 'payment intent without tokenbill metadata'::text;
        return;
    end if;
    select * into v_grant from api.grant_for_payment(
        p_intent ->> 'id',
        v_meta ->> 'user_id',
        v_meta ->> 'package',
        coalesce(tokenbill.stripe_int(p_intent -> 'amount_received'),
                 tokenbill.stripe_int(p_intent -> 'amount')),
        p_intent ->> 'currency',
        null,
        p_stripe_event_id,
        tokenbill.stripe_id(v_charge),
        case when jsonb_typeof(v_charge) = 'object' then v_charge ->> 'receipt_url' end);
    return query select
        case when v_grant.status = 'rejected' then 'rejected' else 'processed' end,
        coalesce(v_grant.reason, format('%s %s tokens', v_grant.status, v_grant.tokens));
end
$$;

-- ============================================================================================
-- api.handle_stripe_event — the webhook, in one transaction
-- ============================================================================================
/**
 * Store a verified Stripe event and apply it, once. A duplicate delivery (same event id,
 * already handled) changes nothing and reports outcome 'duplicate'. Deterministic problems
 * (unknown user, amount mismatch, malformed object) are stored as 'rejected'; unknown types as
 * 'ignored'. Any other error propagates, so the caller's transaction rolls back, the caller
 * answers 5xx and Stripe retries.
 */
create function api.handle_stripe_event(p_event jsonb)
returns table (event_id text, outcome text, detail text)
language plpgsql security definer set search_path = '' as $$
declare
    v_id text := p_event ->> 'id';
    v_type text := p_event ->> 'type';
    v_obj jsonb := p_event -> 'data' -> 'object';
    v_outcome text;
    v_detail text;
    v_moved integer;
begin
    if v_id is null or v_type is null or jsonb_typeof(v_obj) is distinct from 'object' then
        raise exception 'malformed Stripe event' using errcode = 'TB003';
    end if;

    -- Dedupe: the row lock serialises concurrent deliveries of one event.
    insert into tokenbill.stripe_events as e (id, type, livemode, api_version, payload, outcome)
    values (v_id, v_type, (p_event ->> 'livemode')::boolean, p_event ->> 'api_version', p_event, 'received')
    on conflict (id) do update
        set attempts = e.attempts + 1, payload = excluded.payload, outcome = 'received'
        where e.outcome = 'failed';
    if not found then
        select e.outcome, e.detail into v_outcome, v_detail from tokenbill.stripe_events e where e.id = v_id;
        return query select v_id, 'duplicate'::text, format('already %s: %s', v_outcome, v_detail);
        return;
    end if;

    begin
        case
            when v_type in ('checkout.session.completed', 'checkout.session.async_payment_succeeded',
                            'checkout.session.async_payment_failed', 'checkout.session.expired') then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.fulfil_checkout_session(v_obj, v_id, v_type) f;
            when v_type = 'payment_intent.succeeded' then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.fulfil_payment_intent(v_obj, v_id) f;
            when v_type = 'payment_intent.payment_failed' then
                if v_obj -> 'metadata' ->> 'user_id' is null then
                    v_outcome := 'ignored';
                    v_detail := 'payment intent without tokenbill metadata';
                else
                    perform tokenbill.record_payment_failure(
                        v_obj ->> 'id',
                        coalesce(v_obj -> 'last_payment_error' ->> 'message', 'payment failed'));
                    v_outcome := 'processed';
                    v_detail := 'payment failure recorded';
                end if;
            when v_type in ('charge.succeeded', 'charge.updated') then
                if v_obj ->> 'payment_intent' is null then
                    v_outcome := 'ignored';
                    v_detail := 'charge without a payment intent';
                else
                    update tokenbill.payments p
                       set charge_id = v_obj ->> 'id',
                           receipt_url = coalesce(v_obj ->> 'receipt_url', p.receipt_url),
                           updated_at = now()
                     where p.payment_intent_id = tokenbill.stripe_id(v_obj -> 'payment_intent');
                    if not found then
                        insert into tokenbill.payments (payment_intent_id, charge_id, receipt_url)
                        values (tokenbill.stripe_id(v_obj -> 'payment_intent'), v_obj ->> 'id',
                                v_obj ->> 'receipt_url')
                        on conflict (payment_intent_id) do nothing;
                    end if;
                    v_outcome := 'processed';
                    v_detail := 'receipt recorded';
                end if;
            when v_type = 'charge.refunded' then
                v_moved := api.revoke_for_refund(
                    tokenbill.stripe_id(v_obj -> 'payment_intent'), v_obj ->> 'id',
                    tokenbill.stripe_int(v_obj -> 'amount_refunded'), v_id);
                v_outcome := 'processed';
                v_detail := format('refunded %s cents in total; %s tokens taken back',
                                   v_obj ->> 'amount_refunded', v_moved);
            when v_type in ('charge.dispute.created', 'charge.dispute.updated',
                            'charge.dispute.closed', 'charge.dispute.funds_withdrawn',
                            'charge.dispute.funds_reinstated') then
                v_moved := api.revoke_for_dispute(
                    v_obj ->> 'id', tokenbill.stripe_id(v_obj -> 'payment_intent'),
                    tokenbill.stripe_id(v_obj -> 'charge'), tokenbill.stripe_int(v_obj -> 'amount'),
                    v_obj ->> 'status', v_obj ->> 'reason', v_id);
                v_outcome := 'processed';
                v_detail := format('dispute %s; %s tokens %s', v_obj ->> 'status', abs(v_moved),
                                   case when v_moved < 0 then 'given back' else 'taken back' end);
            else
                v_outcome := 'ignored';
                v_detail := 'event type not handled';
        end case;
    exception
        -- Deterministic: retrying cannot help, so record it and let Stripe stop.
        when sqlstate 'TB002' or sqlstate 'TB003' or invalid_text_representation
             or numeric_value_out_of_range then
            v_outcome := 'rejected';
            v_detail := sqlerrm;
    end;

    update tokenbill.stripe_events e
       set outcome = v_outcome, detail = v_detail, processed_at = now()
     where e.id = v_id;
    return query select v_id, v_outcome, v_detail;
end
$$;

revoke all on function api.handle_stripe_event(jsonb) from public;
grant execute on function api.handle_stripe_event(jsonb) to tokenbill_app;

/**
 * Keep a verified event whose handling failed (the effect rolled back), so admins see it.
 * Never overwrites an event that was handled; its retry is handled normally.
 */
create function api.record_stripe_event_failure(p_event jsonb, p_error text)
returns void
language sql security definer set search_path = '' as $$
    insert into tokenbill.stripe_events as e (id, type, livemode, api_version, payload, outcome, detail)
    values (p_event ->> 'id', coalesce(p_event ->> 'type', 'unknown'), (p_event ->> 'livemode')::boolean,
            p_event ->> 'api_version', p_event, 'failed', left(p_error, 2000))
    on conflict (id) do update
        set attempts = e.attempts + 1, detail = excluded.detail
        where e.outcome = 'failed';
$$;

revoke all on function api.record_stripe_event_failure(jsonb, text) from public;
grant execute on function api.record_stripe_event_failure(jsonb, text) to tokenbill_app;
