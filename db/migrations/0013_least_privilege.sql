/*
 * 0013 — least privilege, server-side web sessions, and webhook consistency.
 *
 * Roles (all NOLOGIN; logins are NOINHERIT members that can only SET ROLE, see
 * scripts/db_logins.py and docs/security.md):
 *   tokenbill_app      — the web app: exactly the functions its views call.
 *   tokenbill_webhook  — the only role that applies Stripe objects (events, the success page's
 *                        and reconciliation's fulfilment of a session fetched from Stripe).
 *   tokenbill_admin    — admin pages, switched to with SET LOCAL ROLE after the app checked the
 *                        logged-in admin; the acting admin comes from their live web session,
 *                        never from a caller-supplied id.
 *   tokenbill_notifier — scripts/alert_notifier.py's outbox.
 * Internal entry points (grant_for_payment, revoke_for_*, consume, release, admin_adjust with
 * an admin id, set_admin) stay in api for the definer functions that call them but are granted
 * to nobody: only the owner (operators, migrations) executes them.
 * tests/db/test_privileges.py holds the allow-list per role.
 */

-- ============================================================================================
-- Roles (cluster-wide: tolerate a concurrent migration of another database creating them)
-- ============================================================================================
do $$
declare
    v_role text;
begin
    foreach v_role in array array['tokenbill_webhook', 'tokenbill_admin', 'tokenbill_notifier'] loop
        begin
            if not exists (select from pg_catalog.pg_roles where rolname = v_role) then
                execute format('create role %I nologin', v_role);
            end if;
        exception when duplicate_object or unique_violation then
            null;
        end;
    end loop;
end
$$;

comment on role tokenbill_webhook is 'Applies verified Stripe objects: api.handle_stripe_event and api.fulfil_checkout_session.';
comment on role tokenbill_admin is 'Admin pages: read-only reports and api.admin_adjust_balance (actor from the live web session).';
comment on role tokenbill_notifier is 'scripts/alert_notifier.py: claims and finishes low-balance notifications.';

grant usage on schema api to tokenbill_webhook, tokenbill_admin, tokenbill_notifier;

-- ============================================================================================
-- The web role keeps only what the web app calls
-- ============================================================================================
revoke execute on function api.grant_for_payment(text, text, text, integer, text, text, text, text, text) from tokenbill_app;
revoke execute on function api.revoke_for_refund(text, text, integer, text) from tokenbill_app;
revoke execute on function api.revoke_for_dispute(text, text, text, integer, text, text, text) from tokenbill_app;
revoke execute on function api.consume(uuid, text, integer) from tokenbill_app;
revoke execute on function api.release(uuid, text, text) from tokenbill_app;
revoke execute on function api.admin_adjust(uuid, uuid, integer, text) from tokenbill_app;
revoke execute on function api.ledger_audit() from tokenbill_app;
revoke execute on function api.daily_stats(integer) from tokenbill_app;
revoke execute on function api.fulfil_checkout_session(jsonb, uuid) from tokenbill_app;
revoke execute on function api.record_stripe_event_failure(jsonb, text) from tokenbill_app;
revoke execute on function api.claim_alert_notifications(integer) from tokenbill_app;
revoke execute on function api.finish_alert_notification(bigint, text) from tokenbill_app;
revoke execute on function api.handle_stripe_event(jsonb) from tokenbill_app;

grant execute on function api.fulfil_checkout_session(jsonb, uuid) to tokenbill_webhook;
grant execute on function api.record_stripe_event_failure(jsonb, text) to tokenbill_webhook;
grant execute on function api.ledger_audit() to tokenbill_admin;
grant execute on function api.daily_stats(integer) to tokenbill_admin;
grant execute on function api.claim_alert_notifications(integer) to tokenbill_notifier;
grant execute on function api.finish_alert_notification(bigint, text) to tokenbill_notifier;

-- Reconciliation reads which sessions we recorded; admin pages read everything the app reads.
grant select on api.checkout_sessions to tokenbill_webhook;
grant select on api.accounts, api.packages, api.ledger_entries, api.purchases,
    api.checkout_sessions, api.stripe_events, api.disputes, api.api_keys, api.conversations,
    api.messages, api.low_balance_alerts to tokenbill_admin;

-- ============================================================================================
-- Server-side web sessions
-- ============================================================================================
create table tokenbill.web_sessions (
    token_hash    text primary key check (token_hash ~ '^[0-9a-f]{64}$'),
    user_id       uuid not null references tokenbill.users (id) on delete cascade,
    created_at    timestamptz not null default now(),
    ended_at      timestamptz,
    ended_reason  text
);
create index web_sessions_live_idx on tokenbill.web_sessions (user_id) where ended_at is null;

comment on table tokenbill.web_sessions is
    'Browser sessions. The cookie holds a random token; only its SHA-256 is stored. A session ended here (logout, password change) is dead whatever the cookie says.';

/** Sessions live at most this long after login, whatever the cookie says. */
create function tokenbill.web_session_max_age() returns interval
language sql immutable set search_path = '' as $$
    select interval '30 days';
$$;

/** The user of a live session (NULL when unknown, ended or too old). */
create function tokenbill.web_session_owner(p_token_hash text) returns uuid
language sql stable set search_path = '' as $$
    select s.user_id from tokenbill.web_sessions s
     where s.token_hash = p_token_hash and s.ended_at is null
       and s.created_at > now() - tokenbill.web_session_max_age();
$$;

/** Record a session the app just started after checking the password. */
create function api.start_web_session(p_user_id uuid, p_token_hash text)
returns void
language plpgsql security definer set search_path = '' as $$
begin
    if p_token_hash is null or p_token_hash !~ '^[0-9a-f]{64}$' then
        raise exception 'a session token hash is 64 hex digits' using errcode = 'TB003';
    end if;
    perform from tokenbill.users where id = p_user_id;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    insert into tokenbill.web_sessions (token_hash, user_id) values (p_token_hash, p_user_id);
end
$$;

revoke all on function api.start_web_session(uuid, text) from public;
grant execute on function api.start_web_session(uuid, text) to tokenbill_app;

/** The account behind a live session, as flask-login loads it; no row when the session is dead. */
create function api.web_session_user(p_token_hash text)
returns table (id uuid, email text, is_admin boolean, balance integer,
               low_balance_threshold integer, low_balance_alert boolean)
language sql stable security definer set search_path = '' as $$
    select a.id, a.email, a.is_admin, a.balance, a.low_balance_threshold, a.low_balance_alert
      from api.accounts a
     where a.id = tokenbill.web_session_owner(p_token_hash);
$$;

revoke all on function api.web_session_user(text) from public;
grant execute on function api.web_session_user(text) to tokenbill_app;

/** End one session (logout). True when it was live. */
create function api.end_web_session(p_token_hash text)
returns boolean
language sql security definer set search_path = '' as $$
    with ended as (
        update tokenbill.web_sessions set ended_at = now(), ended_reason = 'logout'
         where token_hash = p_token_hash and ended_at is null
        returning 1)
    select exists (select from ended);
$$;

revoke all on function api.end_web_session(text) from public;
grant execute on function api.end_web_session(text) to tokenbill_app;

/**
 * Change the password of the session's user and end every other session of theirs, so a
 * stolen cookie dies with the old password. The user comes from the live session only.
 * Returns how many other sessions were ended.
 */
create function api.change_password(p_token_hash text, p_new_password_hash text)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_user uuid := tokenbill.web_session_owner(p_token_hash);
    v_ended integer;
begin
    if v_user is null then
        raise exception 'no live session' using errcode = 'TB006';
    end if;
    if p_new_password_hash is null or length(p_new_password_hash) = 0 then
        raise exception 'a password hash is required' using errcode = 'TB003';
    end if;
    update tokenbill.users set password_hash = p_new_password_hash where id = v_user;
    update tokenbill.web_sessions set ended_at = now(), ended_reason = 'password changed'
     where user_id = v_user and ended_at is null and token_hash <> p_token_hash;
    get diagnostics v_ended = row_count;
    return v_ended;
end
$$;

revoke all on function api.change_password(text, text) from public;
grant execute on function api.change_password(text, text) to tokenbill_app;

/**
 * An admin's manual adjustment, for the admin role only. The acting admin is the owner of the
 * live web session p_token_hash (an admin), so knowing an admin's id is not enough.
 */
create function api.admin_adjust_balance(
    p_token_hash text, p_user_id uuid, p_delta integer, p_reason text)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_admin uuid := tokenbill.web_session_owner(p_token_hash);
begin
    perform from tokenbill.users where id = v_admin and is_admin;
    if not found then
        raise exception 'only a signed-in admin may adjust balances' using errcode = 'TB006';
    end if;
    return api.admin_adjust(v_admin, p_user_id, p_delta, p_reason);
end
$$;

revoke all on function api.admin_adjust_balance(text, uuid, integer, text) from public;
grant execute on function api.admin_adjust_balance(text, uuid, integer, text) to tokenbill_admin;

-- ============================================================================================
-- Webhook consistency: every grant checks the recorded session
-- ============================================================================================
alter table tokenbill.payments add column conflicting_session_id text;
comment on column tokenbill.payments.conflicting_session_id is
    'A Checkout Session this PaymentIntent claimed though another PaymentIntent had paid it: the payment stays rejected.';

/**
 * Credit a package to a user once per payment (PaymentIntent). The package table decides the
 * tokens; amount and currency must match it; the user must exist. The Checkout Session
 * tokenbill recorded for this payment — named by the caller, already linked to the payment, or
 * linked to the PaymentIntent by an earlier session object — must agree on user and package,
 * and a session already paid by another PaymentIntent is refused. Refusals are recorded on the
 * payment (status 'rejected', reason) and never raise, so Stripe's retries do not loop.
 * status: 'granted' | 'already_granted' | 'rejected' (with reason; nothing credited).
 */
create or replace function api.grant_for_payment(
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
    v_other text;
    v_link text := p_checkout_session_id;
    v_reason text;
    v_balance integer;
begin
    if p_payment_intent_id is null or length(p_payment_intent_id) = 0 then
        raise exception 'a payment intent id is required' using errcode = 'TB003';
    end if;

    -- A session another PaymentIntent already paid is not linked to this one.
    if p_checkout_session_id is not null then
        select p.payment_intent_id into v_other from tokenbill.payments p
         where p.checkout_session_id = p_checkout_session_id
           and p.payment_intent_id <> p_payment_intent_id;
        if v_other is not null then
            v_link := null;
        end if;
    end if;

    -- The upsert locks the payment's row: concurrent grants for one payment queue here.
    insert into tokenbill.payments as p (payment_intent_id, checkout_session_id, charge_id, receipt_url)
    values (p_payment_intent_id, v_link, p_charge_id, p_receipt_url)
    on conflict (payment_intent_id) do update
        set checkout_session_id = coalesce(p.checkout_session_id, excluded.checkout_session_id),
            charge_id = coalesce(excluded.charge_id, p.charge_id),
            receipt_url = coalesce(excluded.receipt_url, p.receipt_url),
            updated_at = now()
    returning * into v_pay;

    if v_pay.status = 'granted' then
        if (v_user is not null and v_user <> v_pay.user_id)
           or (p_package_code is not null and p_package_code <> v_pay.package_code) then
            return query select 'rejected'::text, 0, null::integer,
                format('conflict: payment %s was granted to user %s (package %s), not %s (package %s)',
                       p_payment_intent_id, v_pay.user_id, v_pay.package_code,
                       coalesce(p_user_id, 'unknown'), coalesce(p_package_code, 'unknown'));
            return;
        end if;
        return query select 'already_granted'::text, v_pay.tokens_granted, u.balance, null::text
                       from tokenbill.users u where u.id = v_pay.user_id;
        return;
    end if;

    if v_other is not null then
        v_reason := format('checkout session %s was already paid by %s', p_checkout_session_id, v_other);
        update tokenbill.payments p set conflicting_session_id = p_checkout_session_id
         where p.id = v_pay.id;
    elsif v_pay.conflicting_session_id is not null then
        v_reason := v_pay.reason;
    elsif v_user is null then
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

    if v_reason is null then
        select * into v_session from tokenbill.checkout_sessions s
         where s.id = v_pay.checkout_session_id
            or (v_pay.checkout_session_id is null and s.payment_intent_id = p_payment_intent_id)
         order by (s.id = v_pay.checkout_session_id) desc nulls last
         limit 1;
        if v_session.id is not null
           and (v_session.user_id <> v_user or v_session.package_code <> v_pkg.code) then
            v_reason := format('payment does not match checkout session %s (user %s, package %s)',
                               v_session.id, v_session.user_id, v_session.package_code);
        elsif v_session.id is not null then
            select p.payment_intent_id into v_other from tokenbill.payments p
             where p.checkout_session_id = v_session.id and p.id <> v_pay.id;
            if v_other is not null then
                v_reason := format('checkout session %s was already paid by %s', v_session.id, v_other);
                update tokenbill.payments p set conflicting_session_id = v_session.id
                 where p.id = v_pay.id;
            end if;
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
        p_checkout_session_id => coalesce(v_pay.checkout_session_id, v_session.id),
        p_payment_intent_id => v_pay.payment_intent_id,
        p_charge_id => coalesce(p_charge_id, v_pay.charge_id),
        p_stripe_event_id => p_stripe_event_id);
    update tokenbill.payments p
       set status = 'granted', reason = null, user_id = v_user, package_code = v_pkg.code,
           checkout_session_id = coalesce(p.checkout_session_id, v_session.id),
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

/**
 * Fulfil a Checkout Session object (from an event, the success page or reconciliation).
 * A session whose client_reference_id and metadata.user_id disagree is rejected with the
 * reason; a session never moves to a second PaymentIntent once it has one.
 */
create or replace function tokenbill.fulfil_checkout_session(
    p_session jsonb, p_stripe_event_id text default null, p_event_type text default null)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_id text := p_session ->> 'id';
    v_pi text := tokenbill.stripe_id(p_session -> 'payment_intent');
    v_payment_status text := p_session ->> 'payment_status';
    v_charge jsonb := p_session -> 'payment_intent' -> 'latest_charge';
    v_ref text := p_session ->> 'client_reference_id';
    v_meta_user text := p_session -> 'metadata' ->> 'user_id';
    v_grant record;
begin
    if v_id is null then
        raise exception 'checkout session without an id' using errcode = 'TB003';
    end if;

    update tokenbill.checkout_sessions s
       set status = case when s.status = 'open' then coalesce(p_session ->> 'status', s.status)
                         else s.status end,
           payment_status = coalesce(v_payment_status, s.payment_status),
           payment_intent_id = coalesce(s.payment_intent_id, v_pi),
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
    if v_ref is not null and v_meta_user is not null and v_ref <> v_meta_user then
        return query select 'rejected'::text,
            format('conflicting user ids: client_reference_id %s, metadata.user_id %s', v_ref, v_meta_user);
        return;
    end if;

    select * into v_grant from api.grant_for_payment(
        v_pi,
        coalesce(v_ref, v_meta_user),
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

-- ============================================================================================
-- api.handle_stripe_event, now knowing the mode of the key it verified the event for
-- ============================================================================================
drop function api.handle_stripe_event(jsonb);

/**
 * Store a verified Stripe event and apply it, once (see 0005). p_livemode is the mode of the
 * Stripe key the caller holds: an event of the other mode is recorded as 'rejected' and never
 * applied (a test-mode event must not grant on a live deployment, nor the reverse).
 */
create function api.handle_stripe_event(p_event jsonb, p_livemode boolean default null)
returns table (event_id text, outcome text, detail text)
language plpgsql security definer set search_path = '' as $$
declare
    v_id text := p_event ->> 'id';
    v_type text := p_event ->> 'type';
    v_obj jsonb := p_event -> 'data' -> 'object';
    v_livemode boolean;
    v_outcome text;
    v_detail text;
    v_moved integer;
begin
    if v_id is null or v_type is null or jsonb_typeof(v_obj) is distinct from 'object' then
        raise exception 'malformed Stripe event' using errcode = 'TB003';
    end if;
    v_livemode := case jsonb_typeof(p_event -> 'livemode') when 'boolean'
                       then (p_event ->> 'livemode')::boolean end;

    -- Dedupe: the row lock serialises concurrent deliveries of one event.
    insert into tokenbill.stripe_events as e (id, type, livemode, api_version, payload, outcome)
    values (v_id, v_type, v_livemode, p_event ->> 'api_version', p_event, 'received')
    on conflict (id) do update
        set attempts = e.attempts + 1, payload = excluded.payload, outcome = 'received'
        where e.outcome = 'failed';
    if not found then
        select e.outcome, e.detail into v_outcome, v_detail from tokenbill.stripe_events e where e.id = v_id;
        return query select v_id, 'duplicate'::text, format('already %s: %s', v_outcome, v_detail);
        return;
    end if;

    if p_livemode is not null and v_livemode is distinct from p_livemode then
        v_outcome := 'rejected';
        v_detail := format('livemode mismatch: event livemode is %s, the key is %s mode; not applied',
                           coalesce(v_livemode::text, 'missing'),
                           case when p_livemode then 'live' else 'test' end);
    else
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
             or numeric_value_out_of_range or unique_violation then
            v_outcome := 'rejected';
            v_detail := sqlerrm;
    end;
    end if;

    update tokenbill.stripe_events e
       set outcome = v_outcome, detail = v_detail, processed_at = now()
     where e.id = v_id;
    return query select v_id, v_outcome, v_detail;
end
$$;

revoke all on function api.handle_stripe_event(jsonb, boolean) from public;
grant execute on function api.handle_stripe_event(jsonb, boolean) to tokenbill_webhook;
