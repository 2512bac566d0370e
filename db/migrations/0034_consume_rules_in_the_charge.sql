/*
 * 0034 — api.consume decides in its one statement what 0020 decided in plpgsql around it.
 *
 * Counted by workshop/bench_instructions.py (callgrind), a charge spent about a tenth of its
 * instructions outside its statement, in plpgsql IFs: PL/pgSQL builds each IF's expression
 * state anew in every transaction, so two input checks before the statement and the
 * threshold test after it (a least/greatest/coalesce expression over four variables) cost
 * more than the same tests as part of the statement's plan. Now:
 *
 *   - the input rules (a request id of 1 to 200 characters, a positive cost) are conditions
 *     of the balance UPDATE (a one-time filter): bad input moves nothing, and only then are
 *     the rules tested one by one, to raise the same TB003 errors as before;
 *   - the statement returns whether the new balance crossed a threshold (crossed: the
 *     balance before was at or above the lower of the low-balance and auto top-up
 *     thresholds, the balance after is below the higher one; least/greatest skip a NULL
 *     top-up threshold as 0020's coalesce did), so the common charge tests one boolean.
 * Same results, errors and ledger rows as 0020; signature unchanged.
 */
create or replace function api.consume(p_user_id uuid, p_request_id text, p_cost integer default 1)
returns table (ok boolean, balance integer, reason text)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_alert integer;
    v_topup integer;
    v_crossed boolean;
    v_ledger_id bigint;
    v_previous integer;
begin
    with moved as (
        update tokenbill.users u
           set balance = u.balance - p_cost
         where u.id = p_user_id and u.balance >= p_cost
           and p_cost > 0 and length(p_request_id) between 1 and 200
        returning u.balance, u.low_balance_threshold, u.auto_topup_threshold),
    entry as (
        insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id)
        select p_user_id, 'consumption', -p_cost, m.balance, p_request_id from moved m
        on conflict (user_id, request_id) where kind = 'consumption' do nothing
        returning id)
    select m.balance, m.low_balance_threshold, m.auto_topup_threshold, e.id,
           m.balance < greatest(m.low_balance_threshold, m.auto_topup_threshold)
           and m.balance + p_cost >= least(m.low_balance_threshold, m.auto_topup_threshold)
      into v_balance, v_alert, v_topup, v_ledger_id, v_crossed
      from moved m left join entry e on true;

    if v_ledger_id is not null then
        if v_crossed then
            perform tokenbill.debit_crossed(p_user_id, v_ledger_id, v_balance, -p_cost, v_alert,
                                            v_topup);
        end if;
        return query select true, v_balance, null::text;
        return;
    end if;

    -- nothing charged: bad input, a replay, a short balance or an unknown user
    if p_request_id is null or length(p_request_id) not between 1 and 200 then
        raise exception 'request id must be 1 to 200 characters' using errcode = 'TB003';
    end if;
    if p_cost is null or p_cost < 1 then
        raise exception 'cost must be a positive number of tokens' using errcode = 'TB003';
    end if;
    if v_balance is not null then
        -- this request was charged already: give this move back (same transaction)
        update tokenbill.users u set balance = u.balance + p_cost where u.id = p_user_id;
    end if;
    select l.balance_after into v_previous
      from tokenbill.ledger l
     where l.user_id = p_user_id and l.request_id = p_request_id and l.kind = 'consumption';
    if found then
        return query select true, v_previous, 'replayed'::text;
        return;
    end if;
    select u.balance into v_balance from tokenbill.users u where u.id = p_user_id;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    return query select false, v_balance, 'insufficient_tokens'::text;
end
$$;
comment on function api.consume(uuid, text, integer) is
    'Charge p_cost tokens once per (user, request id) in one statement, which also applies the input rules and tests the thresholds (0034): replays return the original balance, a short balance charges nothing. Owner-only since 0013.';
