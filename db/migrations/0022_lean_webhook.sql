/*
 * 0022 — a leaner webhook grant (issue 16), measured by workshop.bench_http (docs/performance.md).
 *
 * Same signatures, same results, same guarantees; less work per Stripe event:
 *   - api.handle_stripe_event is a dispatcher: it checks the event, dedupes it and records its
 *     outcome; each event type is applied by its own tokenbill.* handler (the checkout,
 *     payment intent and invoice functions of 0019, and the on_* functions below), so a later
 *     migration replaces only the handler that changes, never the whole webhook again.
 *   - The inbox row is written once, with its outcome, instead of inserted as 'received' and
 *     updated (an update of outcome is never HOT: it is in the attention index's predicate).
 *     Concurrent deliveries of one event still queue: on a transaction advisory lock keyed by
 *     the event id, taken before the inbox is read; the primary key stays the last word (an
 *     insert that finds a non-failed row raises, rolling the effect back).
 *   - tokenbill.stripe_id / stripe_int / to_uuid become plpgsql: a `language sql` function
 *     with a pinned search_path is never inlined, and PostgreSQL 15 parses and plans its body
 *     again in every statement that calls it (a grant calls them about twenty times).
 *   - tokenbill.payments' nine CHECK constraints become one calling an IMMUTABLE plpgsql
 *     function: PostgreSQL 15 rebuilds every CHECK expression from its stored text on every
 *     statement that writes the table, and a grant writes the payment row three times.
 */

-- ============================================================================================
-- Stripe JSON helpers in plpgsql (same results, cached plans)
-- ============================================================================================
create or replace function tokenbill.stripe_id(p_value jsonb) returns text
language plpgsql immutable set search_path = '' as $$
begin
    return case jsonb_typeof(p_value)
               when 'string' then p_value #>> '{}'
               when 'object' then p_value ->> 'id'
           end;
end
$$;

create or replace function tokenbill.stripe_int(p_value jsonb) returns integer
language plpgsql immutable set search_path = '' as $$
begin
    return case when jsonb_typeof(p_value) = 'number' and (p_value #>> '{}') ~ '^-?[0-9]{1,9}$'
                then (p_value #>> '{}')::integer end;
end
$$;

create or replace function tokenbill.to_uuid(p_value text) returns uuid
language plpgsql immutable set search_path = '' as $$
begin
    return case when p_value ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                then p_value::uuid end;
end
$$;

-- ============================================================================================
-- One CHECK on tokenbill.payments
-- ============================================================================================
/**
 * The rules of a payments row, each exactly as its CHECK of 0003/0019 said (a NULL passes, as
 * in a CHECK): known status, non-negative counts and amounts, clawed within granted, https
 * invoice links.
 */
create function tokenbill.payment_is_valid(
    p_status text, p_tokens_granted integer, p_tokens_clawed integer, p_refunded_cents integer,
    p_subtotal_cents integer, p_discount_cents integer, p_tax_cents integer,
    p_invoice_url text, p_invoice_pdf_url text)
returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    return (p_status in ('pending', 'granted', 'rejected', 'failed')) is not false
       and (p_tokens_granted >= 0) is not false
       and (p_tokens_clawed >= 0 and p_tokens_clawed <= p_tokens_granted) is not false
       and (p_refunded_cents >= 0) is not false
       and (p_subtotal_cents >= 0) is not false
       and (p_discount_cents >= 0) is not false
       and (p_tax_cents >= 0) is not false
       and (p_invoice_url ~ '^https://') is not false
       and (p_invoice_pdf_url ~ '^https://') is not false;
end
$$;
comment on function tokenbill.payment_is_valid(text,integer,integer,integer,integer,integer,integer,text,text) is
    'The CHECK of tokenbill.payments (0022): the nine rules of 0003/0019 in one IMMUTABLE call.';

alter table tokenbill.payments
    drop constraint payments_status_check,
    drop constraint payments_tokens_granted_check,
    drop constraint payments_check,
    drop constraint payments_refunded_cents_check,
    drop constraint payments_subtotal_cents_check,
    drop constraint payments_discount_cents_check,
    drop constraint payments_tax_cents_check,
    drop constraint payments_invoice_url_check,
    drop constraint payments_invoice_pdf_url_check,
    add constraint payments_valid check (tokenbill.payment_is_valid(
        status, tokens_granted, tokens_clawed, refunded_cents, subtotal_cents, discount_cents,
        tax_cents, invoice_url, invoice_pdf_url));

-- ============================================================================================
-- One handler per event type (the branches of 0019's api.handle_stripe_event, unchanged)
-- ============================================================================================
/** payment_intent.payment_failed: record why a tokenbill PaymentIntent failed (0015). */
create function tokenbill.on_payment_intent_failed(p_intent jsonb)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
begin
    if p_intent -> 'metadata' ->> 'user_id' is null then
        return query select 'ignored'::text, 'payment intent without tokenbill metadata'::text;
        return;
    end if;
    perform tokenbill.record_payment_failure(
        p_intent, coalesce(p_intent -> 'last_payment_error' ->> 'message', 'payment failed'));
    return query select 'processed'::text, 'payment failure recorded'::text;
end
$$;
comment on function tokenbill.on_payment_intent_failed(jsonb) is 'Webhook handler for payment_intent.payment_failed: records the failure of a tokenbill PaymentIntent.';

/** charge.succeeded / charge.updated: keep the charge id and receipt on the payment. */
create function tokenbill.on_charge(p_charge jsonb)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_pi text := tokenbill.stripe_id(p_charge -> 'payment_intent');
begin
    if p_charge ->> 'payment_intent' is null then
        return query select 'ignored'::text, 'charge without a payment intent'::text;
        return;
    end if;
    update tokenbill.payments p
       set charge_id = p_charge ->> 'id',
           receipt_url = coalesce(p_charge ->> 'receipt_url', p.receipt_url),
           updated_at = now()
     where p.payment_intent_id = v_pi;
    if not found then
        insert into tokenbill.payments (payment_intent_id, charge_id, receipt_url)
        values (v_pi, p_charge ->> 'id', p_charge ->> 'receipt_url')
        on conflict (payment_intent_id) do nothing;
    end if;
    return query select 'processed'::text, 'receipt recorded'::text;
end
$$;
comment on function tokenbill.on_charge(jsonb) is 'Webhook handler for charge.succeeded / charge.updated: records the charge id and receipt URL on the payment.';

/** charge.refunded: take back tokens in proportion to the amount refunded so far. */
create function tokenbill.on_charge_refunded(p_charge jsonb, p_stripe_event_id text)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_moved integer;
begin
    v_moved := api.revoke_for_refund(
        tokenbill.stripe_id(p_charge -> 'payment_intent'), p_charge ->> 'id',
        tokenbill.stripe_int(p_charge -> 'amount_refunded'), p_stripe_event_id);
    return query select 'processed'::text,
        format('refunded %s cents in total; %s tokens taken back',
               p_charge ->> 'amount_refunded', v_moved);
end
$$;
comment on function tokenbill.on_charge_refunded(jsonb,text) is 'Webhook handler for charge.refunded: claws back tokens in proportion to the refunded amount.';

/** charge.dispute.*: hold back (or give back) the disputed share of the tokens. */
create function tokenbill.on_dispute(p_dispute jsonb, p_stripe_event_id text)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_moved integer;
begin
    v_moved := api.revoke_for_dispute(
        p_dispute ->> 'id', tokenbill.stripe_id(p_dispute -> 'payment_intent'),
        tokenbill.stripe_id(p_dispute -> 'charge'), tokenbill.stripe_int(p_dispute -> 'amount'),
        p_dispute ->> 'status', p_dispute ->> 'reason', p_stripe_event_id);
    return query select 'processed'::text,
        format('dispute %s; %s tokens %s', p_dispute ->> 'status', abs(v_moved),
               case when v_moved < 0 then 'given back' else 'taken back' end);
end
$$;
comment on function tokenbill.on_dispute(jsonb,text) is 'Webhook handler for charge.dispute.*: holds back tokens for an open or lost dispute, gives them back when won.';

-- ============================================================================================
-- The dispatcher
-- ============================================================================================
/**
 * Store a verified Stripe event and apply it, once (see 0005). p_livemode is the mode of the
 * Stripe key the caller holds: an event of the other mode is recorded as 'rejected' and never
 * applied. 0022: one handler per event type; the inbox row is written once, with the outcome,
 * after the effect, under an advisory lock on the event id that serialises its deliveries.
 * A new event type adds a handler and a branch here; a changed one replaces only its handler.
 */
create or replace function api.handle_stripe_event(p_event jsonb, p_livemode boolean default null)
returns table (event_id text, outcome text, detail text)
language plpgsql security definer set search_path = '' as $$
declare
    v_id text := p_event ->> 'id';
    v_type text := p_event ->> 'type';
    v_obj jsonb := p_event -> 'data' -> 'object';
    v_livemode boolean;
    v_outcome text;
    v_detail text;
begin
    if v_id is null or v_type is null or jsonb_typeof(v_obj) is distinct from 'object' then
        raise exception 'malformed Stripe event' using errcode = 'TB003';
    end if;
    v_livemode := case jsonb_typeof(p_event -> 'livemode') when 'boolean'
                       then (p_event ->> 'livemode')::boolean end;

    -- Dedupe: deliveries of one event queue here until the first one commits or rolls back.
    -- (class 22, this migration's number: no other advisory lock in tokenbill uses it).
    perform pg_advisory_xact_lock(22, hashtext(v_id));
    select e.outcome, e.detail into v_outcome, v_detail from tokenbill.stripe_events e where e.id = v_id;
    if found and v_outcome <> 'failed' then
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
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.on_payment_intent_failed(v_obj) f;
            when v_type in ('invoice.paid', 'invoice.finalized') then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.record_invoice(v_obj) f;
            when v_type in ('charge.succeeded', 'charge.updated') then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.on_charge(v_obj) f;
            when v_type = 'charge.refunded' then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.on_charge_refunded(v_obj, v_id) f;
            when v_type in ('charge.dispute.created', 'charge.dispute.updated',
                            'charge.dispute.closed', 'charge.dispute.funds_withdrawn',
                            'charge.dispute.funds_reinstated') then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.on_dispute(v_obj, v_id) f;
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

    -- A 'failed' row (an earlier attempt rolled back) is the only one an event may overwrite.
    insert into tokenbill.stripe_events as e
           (id, type, livemode, api_version, payload, outcome, detail, processed_at)
    values (v_id, v_type, v_livemode, p_event ->> 'api_version', p_event, v_outcome, v_detail, now())
    on conflict (id) do update
        set attempts = e.attempts + 1, payload = excluded.payload, outcome = excluded.outcome,
            detail = excluded.detail, processed_at = excluded.processed_at
        where e.outcome = 'failed';
    if not found then
        raise exception 'Stripe event % was recorded by another transaction meanwhile', v_id
            using errcode = 'serialization_failure';
    end if;
    return query select v_id, v_outcome, v_detail;
end
$$;

comment on function api.handle_stripe_event(jsonb,boolean) is
    'The Stripe webhook: dedupe a verified event on its id, apply it once through its type''s tokenbill handler, record the outcome (0022: a dispatcher).';

-- ============================================================================================
-- api.grant_for_payment and the Checkout amounts: fewer statements, same checks
-- ============================================================================================
/*
 * From 0013's text, changes marked "0022":
 *   - the recorded session is looked up by its id, or (no session linked yet) by the
 *     PaymentIntent through a new partial index, instead of one OR query PostgreSQL planned
 *     again on every call (and that scanned the whole table for a PaymentIntent-first grant);
 *   - the "session already paid by another PaymentIntent" query runs only when the session
 *     found is not the one on this payment's row (that one is unique to it);
 *   - tokenbill.settle_payment runs after a grant only when a refund or a dispute arrived
 *     before it (else it would move nothing);
 *   - a Checkout Session's amounts (total, subtotal, discount, tax, promotion code, invoice)
 *     are written by the granting UPDATE itself (new last parameter p_session) instead of a
 *     second UPDATE of the same row afterwards (which re-ran both foreign-key checks, the
 *     row being new in this transaction); tokenbill.record_checkout_amounts remains for a
 *     payment granted earlier.
 */
create index checkout_sessions_payment_intent_idx on tokenbill.checkout_sessions (payment_intent_id)
    where payment_intent_id is not null;
comment on index tokenbill.checkout_sessions_payment_intent_idx is 'Finds the recorded session of a PaymentIntent whose payment has none linked yet (api.grant_for_payment).';

drop function api.grant_for_payment(text, text, text, integer, text, text, text, text, text);
create function api.grant_for_payment(
    p_payment_intent_id text,
    p_user_id text,
    p_package_code text,
    p_amount_cents integer,
    p_currency text,
    p_checkout_session_id text default null,
    p_stripe_event_id text default null,
    p_charge_id text default null,
    p_receipt_url text default null,
    p_session jsonb default null
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
    v_amounts boolean;
    v_invoice jsonb := p_session -> 'invoice';
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
        -- 0022: two index lookups instead of one OR query planned on every call
        if v_pay.checkout_session_id is not null then
            select * into v_session from tokenbill.checkout_sessions s
             where s.id = v_pay.checkout_session_id;
        else
            select * into v_session from tokenbill.checkout_sessions s
             where s.payment_intent_id = p_payment_intent_id
             limit 1;
        end if;
        if v_session.id is not null
           and (v_session.user_id <> v_user or v_session.package_code <> v_pkg.code) then
            v_reason := format('payment does not match checkout session %s (user %s, package %s)',
                               v_session.id, v_session.user_id, v_session.package_code);
        elsif v_session.id is not null and v_session.id is distinct from v_pay.checkout_session_id then
            -- 0022: a session on this payment's own row is unique to it (nobody else paid it)
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
    -- 0022: the session's amounts, when it is this payment's session (as in
    -- tokenbill.record_checkout_amounts)
    v_amounts := p_session ->> 'id' = coalesce(v_pay.checkout_session_id, v_session.id);
    update tokenbill.payments p
       set status = 'granted', reason = null, user_id = v_user, package_code = v_pkg.code,
           checkout_session_id = coalesce(p.checkout_session_id, v_session.id),
           amount_cents = case when v_amounts
                               then coalesce(tokenbill.stripe_int(p_session -> 'amount_total'), p_amount_cents)
                               else p_amount_cents end,
           currency = lower(p_currency),
           tokens_granted = v_pkg.tokens, granted_at = now(), updated_at = now(),
           subtotal_cents = case when v_amounts
                                 then coalesce(tokenbill.stripe_int(p_session -> 'amount_subtotal'), p.subtotal_cents)
                                 else p.subtotal_cents end,
           discount_cents = case when v_amounts
                                 then coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_discount'), p.discount_cents)
                                 else p.discount_cents end,
           tax_cents = case when v_amounts
                            then coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_tax'), p.tax_cents)
                            else p.tax_cents end,
           promotion_code = case when v_amounts
                                 then coalesce(tokenbill.stripe_id(p_session -> 'discounts' -> 0 -> 'promotion_code'), p.promotion_code)
                                 else p.promotion_code end,
           invoice_id = case when v_amounts
                             then coalesce(tokenbill.stripe_id(v_invoice), p.invoice_id)
                             else p.invoice_id end,
           invoice_url = case when v_amounts and v_invoice ->> 'hosted_invoice_url' ~ '^https://'
                              then v_invoice ->> 'hosted_invoice_url' else p.invoice_url end,
           invoice_pdf_url = case when v_amounts and v_invoice ->> 'invoice_pdf' ~ '^https://'
                                  then v_invoice ->> 'invoice_pdf' else p.invoice_pdf_url end
     where p.id = v_pay.id;

    -- A refund or dispute may have been reported before any grant event arrived (both lock
    -- this row first, so what they recorded is visible now). 0022: only then can it move.
    if (v_pay.refunded_cents > 0
        or exists (select from tokenbill.disputes d where d.payment_id = v_pay.id))
       and tokenbill.settle_payment(v_pay.id, p_stripe_event_id) <> 0 then
        select u.balance into v_balance from tokenbill.users u where u.id = v_user;
    end if;
    return query select 'granted'::text, v_pkg.tokens, v_balance, null::text;
end
$$;
revoke all on function api.grant_for_payment(text, text, text, integer, text, text, text, text, text, jsonb) from public;
comment on function api.grant_for_payment(text,text,text,integer,text,text,text,text,text,jsonb) is
    'Credit a package to a user once per payment (PaymentIntent), checking amount, currency, user and the recorded Checkout Session; refusals are recorded, never raised. p_session (0022): the Checkout Session object whose amounts the grant records.';

/**
 * Keep what a Checkout Session says about the money: total, subtotal, discount, tax, invoice.
 * 0022 (from 0019's text): clawbacks are settled again only when the total changed (they are
 * proportional to it; nothing else here moves them).
 */
create or replace function tokenbill.record_checkout_amounts(p_session jsonb) returns void
language plpgsql set search_path = '' as $$
declare
    v_pi text := tokenbill.stripe_id(p_session -> 'payment_intent');
    v_invoice jsonb := p_session -> 'invoice';
    v_pay bigint;
    v_total_changed boolean;
begin
    update tokenbill.payments p
       set amount_cents = coalesce(tokenbill.stripe_int(p_session -> 'amount_total'), p.amount_cents),
           subtotal_cents = coalesce(tokenbill.stripe_int(p_session -> 'amount_subtotal'), p.subtotal_cents),
           discount_cents = coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_discount'), p.discount_cents),
           tax_cents = coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_tax'), p.tax_cents),
           promotion_code = coalesce(tokenbill.stripe_id(p_session -> 'discounts' -> 0 -> 'promotion_code'),
                                     p.promotion_code),
           invoice_id = coalesce(tokenbill.stripe_id(v_invoice), p.invoice_id),
           invoice_url = coalesce(case when v_invoice ->> 'hosted_invoice_url' ~ '^https://'
                                       then v_invoice ->> 'hosted_invoice_url' end, p.invoice_url),
           invoice_pdf_url = coalesce(case when v_invoice ->> 'invoice_pdf' ~ '^https://'
                                           then v_invoice ->> 'invoice_pdf' end, p.invoice_pdf_url),
           updated_at = now()
      from (select o.id, o.amount_cents from tokenbill.payments o
             where o.payment_intent_id = v_pi and o.status = 'granted'
               and o.checkout_session_id = p_session ->> 'id') old
     where p.id = old.id
    returning p.id, p.amount_cents is distinct from old.amount_cents into v_pay, v_total_changed;
    if v_total_changed then
        -- refunds claw back in proportion to the total actually paid
        perform tokenbill.settle_payment(v_pay);
    end if;
end
$$;

/**
 * Fulfil a Checkout Session object (from an event, the success page or reconciliation): the
 * handler of checkout.session.* events. From 0019's text; 0022: the session goes to
 * api.grant_for_payment, whose grant records its amounts, so only a payment granted earlier
 * needs tokenbill.record_checkout_amounts.
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
        tokenbill.checkout_list_amount(p_session),  -- 0019: was amount_total
        p_session ->> 'currency',
        v_id,
        p_stripe_event_id,
        tokenbill.stripe_id(v_charge),
        case when jsonb_typeof(v_charge) = 'object' then v_charge ->> 'receipt_url' end,
        p_session);  -- 0022: a new grant records the session's amounts itself
    if v_grant.status = 'already_granted' then
        perform tokenbill.record_checkout_amounts(p_session);  -- 0019
    end if;
    return query select
        case when v_grant.status = 'rejected' then 'rejected' else 'processed' end,
        coalesce(v_grant.reason, format('%s %s tokens', v_grant.status, v_grant.tokens));
end
$$;
