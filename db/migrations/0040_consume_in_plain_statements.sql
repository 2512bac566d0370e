/*
 * 0040 — api.consume charges in plain statements (issue 16: the charge).
 *
 * 0034 wrote the charge as one statement: a CTE for the balance's UPDATE and the ledger's
 * INSERT … ON CONFLICT DO NOTHING, and a final SELECT joining the two (a nested loop over two
 * CTE scans) to read the balance, the thresholds and the new row's id. 0039 found, for the
 * agent request, that such a statement's executor start-up costs more than the plain
 * statements it stands for; the same holds here. The UPDATE … RETURNING INTO, then, only when
 * the balance moved, the INSERT … ON CONFLICT DO NOTHING RETURNING INTO, then the threshold
 * test in plpgsql: callgrind per call 405,920 → 386,866 instructions (−4.7 %; the least
 * plpgsql function around the bare one-statement write is 338,209 on the same copy).
 *
 * The same rows, in the same order, in one transaction, with the same lock: the UPDATE takes
 * the user's row lock first, so a twin with the same request id waits for it and then finds
 * the ledger row taken (ON CONFLICT DO NOTHING); its move is given back and it answers
 * 'replayed', as before. Bad input moves nothing (the UPDATE's own conditions) and is refused
 * below, as before; the refusal and replay paths are 0034's text. The success answer is the
 * OUT columns and RETURN NEXT instead of RETURN QUERY SELECT (one query less).
 */
create or replace function api.consume(p_user_id uuid, p_request_id text, p_cost integer default 1)
returns table (ok boolean, balance integer, reason text)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_alert integer;
    v_topup integer;
    v_ledger_id bigint;
    v_previous integer;
begin
    -- the charge: the balance (its row lock serialises this user's charges to the commit),
    -- then the ledger row, unless this request id was charged already (ON CONFLICT)
    update tokenbill.users u
       set balance = u.balance - p_cost
     where u.id = p_user_id and u.balance >= p_cost
       and p_cost > 0 and length(p_request_id) between 1 and 200
    returning u.balance, u.low_balance_threshold, u.auto_topup_threshold
         into v_balance, v_alert, v_topup;
    if v_balance is not null then
        insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id)
        values (p_user_id, 'consumption', -p_cost, v_balance, p_request_id)
        on conflict (user_id, request_id) where kind = 'consumption' do nothing
        returning id into v_ledger_id;
        if v_ledger_id is not null then
            -- post_entry's threshold check for a debit, inline: runs only when one is crossed
            if v_balance < greatest(v_alert, v_topup)
               and v_balance + p_cost >= least(v_alert, v_topup) then
                perform tokenbill.debit_crossed(p_user_id, v_ledger_id, v_balance, -p_cost,
                                                v_alert, v_topup);
            end if;
            ok := true; balance := v_balance;
            return next;
            return;
        end if;
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
    'Charge p_cost tokens once per (user, request id): the balance''s UPDATE (which also applies the input rules), then the ledger row (ON CONFLICT DO NOTHING), then the threshold test (0040): replays return the original balance, a short balance charges nothing. Owner-only since 0013.';
