/*
 * 0004 — token movements: the one internal writer, consume/release, admin adjust, audit.
 *
 * Error codes (SQLSTATE) raised by tokenbill functions:
 *   TB001 immutable   — append-only ledger, package terms
 *   TB002 not found   — unknown user, conversation, key
 *   TB003 invalid     — bad argument (null id, non-positive cost, malformed Stripe object)
 *   TB004 conflict    — e.g. the email is already registered
 *   TB005 insufficient — an adjustment would make a balance negative
 *   TB006 forbidden   — caller lacks the right (not an admin)
 */

-- ============================================================================================
-- tokenbill.post_entry — the only code that changes a balance
-- ============================================================================================
/**
 * Move p_delta tokens for a user and append the ledger row, in one place, so that
 * users.balance always equals the sum of the user's ledger deltas.
 * Returns the new balance, or NULL (and changes nothing) when the balance would drop below
 * zero and p_allow_negative is false. The UPDATE is a single conditional statement, so a
 * balance can never be overdrawn, whatever runs concurrently.
 */
create function tokenbill.post_entry(
    p_user_id uuid,
    p_kind tokenbill.ledger_kind,
    p_delta integer,
    p_allow_negative boolean default false,
    p_request_id text default null,
    p_payment_id bigint default null,
    p_checkout_session_id text default null,
    p_payment_intent_id text default null,
    p_charge_id text default null,
    p_dispute_id text default null,
    p_stripe_event_id text default null,
    p_reason text default null,
    p_actor_id uuid default null
) returns integer
language plpgsql set search_path = '' as $$
declare
    v_balance integer;
begin
    update tokenbill.users
       set balance = balance + p_delta
     where id = p_user_id
       and (p_allow_negative or balance + p_delta >= 0)
    returning balance into v_balance;
    if not found then
        return null;
    end if;

    insert into tokenbill.ledger (
        user_id, kind, delta, balance_after, request_id, payment_id, checkout_session_id,
        payment_intent_id, charge_id, dispute_id, stripe_event_id, reason, actor_id)
    values (
        p_user_id, p_kind, p_delta, v_balance, p_request_id, p_payment_id, p_checkout_session_id,
        p_payment_intent_id, p_charge_id, p_dispute_id, p_stripe_event_id, p_reason, p_actor_id);
    return v_balance;
end
$$;

/** Lock a user's row so that all of that user's movements run one at a time; raise if unknown. */
create function tokenbill.lock_user(p_user_id uuid) returns integer
language plpgsql set search_path = '' as $$
declare
    v_balance integer;
begin
    select balance into v_balance from tokenbill.users where id = p_user_id for update;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    return v_balance;
end
$$;

-- ============================================================================================
-- api.consume
-- ============================================================================================
/**
 * Take p_cost tokens for one agent request. Idempotent per (user, request id): a second call
 * with the same request id charges nothing and returns the first call's result with
 * reason 'replayed'. Refuses (ok = false, reason 'insufficient_tokens') rather than overdraw.
 */
create function api.consume(p_user_id uuid, p_request_id text, p_cost integer default 1)
returns table (ok boolean, balance integer, reason text)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_new integer;
    v_previous integer;
begin
    if p_request_id is null or length(p_request_id) not between 1 and 200 then
        raise exception 'request id must be 1 to 200 characters' using errcode = 'TB003';
    end if;
    if p_cost is null or p_cost < 1 then
        raise exception 'cost must be a positive number of tokens' using errcode = 'TB003';
    end if;

    v_balance := tokenbill.lock_user(p_user_id);

    select l.balance_after into v_previous
      from tokenbill.ledger l
     where l.user_id = p_user_id and l.request_id = p_request_id and l.kind = 'consumption';
    if found then
        return query select true, v_previous, 'replayed'::text;
        return;
    end if;

    v_new := tokenbill.post_entry(p_user_id, 'consumption', -p_cost, p_request_id => p_request_id);
    if v_new is null then
        -- we hold the row lock, so v_balance is still the balance as it stands
        return query select false, v_balance, 'insufficient_tokens'::text;
        return;
    end if;
    return query select true, v_new, null::text;
end
$$;

revoke all on function api.consume(uuid, text, integer) from public;
grant execute on function api.consume(uuid, text, integer) to tokenbill_app;

-- ============================================================================================
-- api.release
-- ============================================================================================
/**
 * Give back the tokens of a consumption whose agent call failed. Idempotent: status is
 * 'released' the first time, 'already_released' after, 'not_found' when nothing was consumed.
 */
create function api.release(p_user_id uuid, p_request_id text, p_reason text default null)
returns table (status text, balance integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_consumed integer;
begin
    v_balance := tokenbill.lock_user(p_user_id);

    select -l.delta into v_consumed
      from tokenbill.ledger l
     where l.user_id = p_user_id and l.request_id = p_request_id and l.kind = 'consumption';
    if not found then
        return query select 'not_found'::text, v_balance;
        return;
    end if;

    perform from tokenbill.ledger l
     where l.user_id = p_user_id and l.request_id = p_request_id and l.kind = 'consumption_refund';
    if found then
        return query select 'already_released'::text, v_balance;
        return;
    end if;

    v_balance := tokenbill.post_entry(
        p_user_id, 'consumption_refund', v_consumed, p_allow_negative => true,
        p_request_id => p_request_id, p_reason => coalesce(p_reason, 'agent request failed'));
    return query select 'released'::text, v_balance;
end
$$;

revoke all on function api.release(uuid, text, text) from public;
grant execute on function api.release(uuid, text, text) to tokenbill_app;

-- ============================================================================================
-- api.admin_adjust
-- ============================================================================================
/**
 * Credit or debit a user by hand. Only an admin may, a reason is required, and the result
 * may not be negative (only refund/dispute clawbacks can make a balance negative).
 */
create function api.admin_adjust(p_admin_id uuid, p_user_id uuid, p_delta integer, p_reason text)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
begin
    perform from tokenbill.users where id = p_admin_id and is_admin;
    if not found then
        raise exception 'only an admin may adjust balances' using errcode = 'TB006';
    end if;
    if p_delta is null or p_delta = 0 then
        raise exception 'adjustment must be a non-zero number of tokens' using errcode = 'TB003';
    end if;
    if p_reason is null or length(btrim(p_reason)) = 0 then
        raise exception 'a reason is required' using errcode = 'TB003';
    end if;

    perform tokenbill.lock_user(p_user_id);
    v_balance := tokenbill.post_entry(
        p_user_id, 'admin_adjustment', p_delta, p_reason => btrim(p_reason), p_actor_id => p_admin_id);
    if v_balance is null then
        raise exception 'adjustment would make the balance negative' using errcode = 'TB005';
    end if;
    return v_balance;
end
$$;

revoke all on function api.admin_adjust(uuid, uuid, integer, text) from public;
grant execute on function api.admin_adjust(uuid, uuid, integer, text) to tokenbill_app;

-- ============================================================================================
-- api.ledger_audit
-- ============================================================================================
/**
 * Every user whose balance disagrees with their ledger: the sum of deltas, or the
 * balance_after of their latest row. Must always return no rows.
 */
create function api.ledger_audit()
returns table (user_id uuid, balance integer, ledger_sum bigint, last_balance_after integer)
language sql stable security definer set search_path = '' as $$
    select u.id, u.balance, coalesce(s.total, 0), s.last_after
      from tokenbill.users u
      left join lateral (
            select sum(l.delta) as total,
                   (select l2.balance_after from tokenbill.ledger l2
                     where l2.user_id = u.id order by l2.id desc limit 1) as last_after
              from tokenbill.ledger l
             where l.user_id = u.id) s on true
     where u.balance <> coalesce(s.total, 0)
        or u.balance is distinct from coalesce(s.last_after, 0);
$$;

revoke all on function api.ledger_audit() from public;
grant execute on function api.ledger_audit() to tokenbill_app;
