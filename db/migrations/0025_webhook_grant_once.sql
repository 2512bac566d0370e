/*
 * 0025 — the webhook grant writes a new payment's row once (issue 16: a grant at ≥ 0.5 × the
 * signature-only control route, workshop.bench_http; docs/performance.md).
 *
 * Same signature, results and guarantees as 0022's api.grant_for_payment. What changes is the
 * order of the work for a payment seen for the first time (the usual case: the first
 * checkout.session.completed of a purchase): 0022 inserted a bare 'pending' row (the upsert
 * that also locks an existing one), checked the event, then updated the same row to 'granted'
 * or 'rejected'. That second write of a row new in the transaction cannot be HOT (user_id is
 * indexed), so it added a row version, six index entries, the CHECK and both foreign-key
 * checks again. Now the checks run first and the row is inserted once, complete; a payment
 * that already has a row is locked and updated as before.
 *
 * Concurrency: two events of one new payment (checkout.session.completed and
 * payment_intent.succeeded, different event ids so different advisory locks) may both find no
 * row. Their INSERTs … ON CONFLICT (payment_intent_id) DO NOTHING meet on the unique index:
 * the second waits for the first to commit, inserts nothing, and starts again on the
 * existing row (locked, so it sees the grant: 'already_granted'). Nothing is read unlocked
 * and then written from what was read except through that insert, whose conflict sends it back.
 */

/**
 * Credit a package to a user once per payment (PaymentIntent), checking amount, currency, user
 * and the recorded Checkout Session; refusals are recorded, never raised (see 0005, 0013,
 * 0022). 0025: a new payment's row is written once, after the checks; an existing one is
 * locked first and updated.
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
    p_receipt_url text default null,
    p_session jsonb default null
) returns table (status text, tokens integer, balance integer, reason text)
language plpgsql security definer set search_path = '' as $$
declare
    v_pay tokenbill.payments;
    v_new boolean;
    v_user uuid;
    v_pkg tokenbill.packages;
    v_session tokenbill.checkout_sessions;
    v_other text;
    v_payer text;
    v_conflict text;  -- a session another PaymentIntent paid, kept on this payment's row
    v_link text := p_checkout_session_id;
    v_session_id text;
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

    loop
        v_user := tokenbill.to_uuid(p_user_id);
        v_reason := null;
        v_conflict := null;
        v_session := null;
        select * into v_pay from tokenbill.payments p where p.payment_intent_id = p_payment_intent_id;
        v_new := not found;
        if not v_new then
            -- The row lock: concurrent grants for one payment queue here.
            update tokenbill.payments p
               set checkout_session_id = coalesce(p.checkout_session_id, v_link),
                   charge_id = coalesce(p_charge_id, p.charge_id),
                   receipt_url = coalesce(p_receipt_url, p.receipt_url),
                   updated_at = now()
             where p.id = v_pay.id
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
        else
            v_pay.checkout_session_id := v_link;
        end if;

        if v_other is not null then
            v_reason := format('checkout session %s was already paid by %s', p_checkout_session_id, v_other);
            v_conflict := p_checkout_session_id;
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
            -- the recorded session: by its id, or (none linked yet) by the PaymentIntent
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
                -- a session on this payment's own row is unique to it (nobody else paid it)
                select p.payment_intent_id into v_payer from tokenbill.payments p
                 where p.checkout_session_id = v_session.id
                   and p.payment_intent_id <> p_payment_intent_id;
                if v_payer is not null then
                    v_reason := format('checkout session %s was already paid by %s', v_session.id, v_payer);
                    v_conflict := v_session.id;
                end if;
            end if;
        end if;

        exit when not v_new;
        -- A new payment: one row, complete (granted, or rejected with the reason).
        v_session_id := coalesce(v_link, case when v_reason is null then v_session.id end);
        v_amounts := v_reason is null and p_session ->> 'id' = v_session_id;
        insert into tokenbill.payments as p (
            payment_intent_id, checkout_session_id, charge_id, receipt_url, status, reason,
            user_id, package_code, amount_cents, currency, tokens_granted, granted_at,
            conflicting_session_id, subtotal_cents, discount_cents, tax_cents, promotion_code,
            invoice_id, invoice_url, invoice_pdf_url)
        values (
            p_payment_intent_id, v_session_id, p_charge_id, p_receipt_url,
            case when v_reason is null then 'granted' else 'rejected' end, v_reason,
            v_user, v_pkg.code,
            case when v_amounts
                 then coalesce(tokenbill.stripe_int(p_session -> 'amount_total'), p_amount_cents)
                 else p_amount_cents end,
            lower(p_currency),
            case when v_reason is null then v_pkg.tokens else 0 end,
            case when v_reason is null then now() end,
            v_conflict,
            case when v_amounts then tokenbill.stripe_int(p_session -> 'amount_subtotal') end,
            coalesce(case when v_amounts
                          then tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_discount') end, 0),
            coalesce(case when v_amounts
                          then tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_tax') end, 0),
            case when v_amounts then tokenbill.stripe_id(p_session -> 'discounts' -> 0 -> 'promotion_code') end,
            case when v_amounts then tokenbill.stripe_id(v_invoice) end,
            case when v_amounts and v_invoice ->> 'hosted_invoice_url' ~ '^https://'
                 then v_invoice ->> 'hosted_invoice_url' end,
            case when v_amounts and v_invoice ->> 'invoice_pdf' ~ '^https://'
                 then v_invoice ->> 'invoice_pdf' end)
        on conflict (payment_intent_id) do nothing
        returning * into v_pay;
        if found then
            if v_reason is not null then
                return query select 'rejected'::text, 0, null::integer, v_reason;
                return;
            end if;
            -- nothing refunded or disputed can name a payment that had no row
            v_balance := tokenbill.post_entry(
                v_user, 'purchase', v_pkg.tokens, p_allow_negative => true,
                p_payment_id => v_pay.id,
                p_checkout_session_id => v_pay.checkout_session_id,
                p_payment_intent_id => v_pay.payment_intent_id,
                p_charge_id => v_pay.charge_id,
                p_stripe_event_id => p_stripe_event_id);
            return query select 'granted'::text, v_pkg.tokens, v_balance, null::text;
            return;
        end if;
        -- Another event of this payment inserted its row meanwhile (and committed): again,
        -- on that row, locked.
    end loop;

    -- An existing payment, locked: as 0022.
    if v_reason is not null then
        update tokenbill.payments p
           set status = 'rejected', reason = v_reason, user_id = coalesce(v_user, p.user_id),
               package_code = coalesce(v_pkg.code, p.package_code), amount_cents = p_amount_cents,
               currency = lower(p_currency), updated_at = now(),
               conflicting_session_id = coalesce(v_conflict, p.conflicting_session_id)
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
    -- the session's amounts, when it is this payment's session
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
    -- this row first, so what they recorded is visible now): only then can it move.
    if (v_pay.refunded_cents > 0
        or exists (select from tokenbill.disputes d where d.payment_id = v_pay.id))
       and tokenbill.settle_payment(v_pay.id, p_stripe_event_id) <> 0 then
        select u.balance into v_balance from tokenbill.users u where u.id = v_user;
    end if;
    return query select 'granted'::text, v_pkg.tokens, v_balance, null::text;
end
$$;
comment on function api.grant_for_payment(text,text,text,integer,text,text,text,text,text,jsonb) is
    'Credit a package to a user once per payment (PaymentIntent), checking amount, currency, user and the recorded Checkout Session; refusals are recorded, never raised. p_session (0022): the Checkout Session object whose amounts the grant records. 0025: a new payment''s row is inserted once, complete, after the checks.';
