/*
 * 0015 — a declined payment says who tried to buy what.
 *
 * payment_intent.payment_failed carries tokenbill's metadata (user_id, package) and the amount,
 * but 0005 stored only the PaymentIntent id and the decline message: admins read "unknown"
 * user, package and amount on the refused payments page, and the buyer's own history (filtered
 * on payments.user_id) never showed the attempt.
 *
 * New: tokenbill.record_payment_failure(jsonb, text), which also records user, package, amount
 * and currency from the intent. Replaced: api.handle_stripe_event(jsonb, boolean), whose only
 * change is that its payment_intent.payment_failed branch passes the intent to that overload
 * (the rest is 0013's text unchanged; grants stay as 0013 set them). Nothing here grants: a
 * failed row is display only, and a later success on the same PaymentIntent still goes
 * through api.grant_for_payment's checks.
 */

/**
 * Mark a not-yet-granted payment as failed and keep who tried to buy what, from the intent's
 * metadata. A user or package that does not exist is stored as NULL (the row is only shown,
 * never granted, and a foreign-key error would make Stripe retry forever). What an earlier
 * event already recorded wins over the metadata.
 */
create function tokenbill.record_payment_failure(p_intent jsonb, p_reason text)
returns void
language sql set search_path = '' as $$
    insert into tokenbill.payments as p
           (payment_intent_id, status, reason, user_id, package_code, amount_cents, currency)
    values (p_intent ->> 'id', 'failed', p_reason,
            (select u.id from tokenbill.users u
              where u.id = tokenbill.to_uuid(p_intent -> 'metadata' ->> 'user_id')),
            (select k.code from tokenbill.packages k
              where k.code = p_intent -> 'metadata' ->> 'package'),
            tokenbill.stripe_int(p_intent -> 'amount'),
            lower(p_intent ->> 'currency'))
    on conflict (payment_intent_id) do update
        set status = 'failed', reason = excluded.reason,
            user_id = coalesce(p.user_id, excluded.user_id),
            package_code = coalesce(p.package_code, excluded.package_code),
            amount_cents = coalesce(p.amount_cents, excluded.amount_cents),
            currency = coalesce(p.currency, excluded.currency),
            updated_at = now()
        where p.status <> 'granted';
$$;

revoke all on function tokenbill.record_payment_failure(jsonb, text) from public;

/**
 * Store a verified Stripe event and apply it, once (see 0005). p_livemode is the mode of the
 * Stripe key the caller holds: an event of the other mode is recorded as 'rejected' and never
 * applied (a test-mode event must not grant on a live deployment, nor the reverse).
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
                    perform tokenbill.record_payment_failure(  -- 0015: the intent, not its id
                        v_obj,
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
