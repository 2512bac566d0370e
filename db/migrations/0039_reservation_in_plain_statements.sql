/*
 * 0039 — the reservation in plain statements (issue 16: one agent request).
 *
 * Since 0023 api.begin_agent_request reserved in one statement: a CTE for the price, the
 * balance's UPDATE, the exchange's INSERT, the ledger row and the conversation (an INSERT for
 * a new one and an UPDATE for a continued one, each behind a one-time filter), joined in a
 * final SELECT. Counted with callgrind (workshop/bench_instructions.py's method, the same
 * warmed copy), the executor start-up of that statement was the largest single part of an
 * agent request: every call initialised both conversation writes, the CTE scans and the two
 * nested loops of the final join, whichever did nothing.
 *
 * The same reservation as plain statements in the same order costs less (instructions per
 * agent request, begin + settle): continuing a conversation 1,300 k → 1,227 k (−5.5 %),
 * starting one 1,345 k → 1,257 k (−6.5 %). The conversation's ownership test stays in the
 * balance's UPDATE, spelled twice (see the comment there): written once with
 * "p_conversation_id is null or …", a request starting a conversation made plpgsql choose a
 * custom plan for the UPDATE on every call, and planning it each time cost more than the
 * whole change saves.
 *
 * Nothing else changes: the same rows, in the same order, in one transaction; the user's row
 * lock (taken by the UPDATE) still serialises one user's reservations, so a twin of this
 * request id either waits for it and then finds the exchange taken (ON CONFLICT DO NOTHING:
 * its move is given back and it replays), or came first. Refusals, replays and the slow path
 * are 0037's text; the commit of a 'started' reservation still skips its WAL flush (0037).
 */
create or replace function api.begin_agent_request(
    p_user_id uuid, p_request_id text, p_conversation_id uuid, p_message text, p_agent text,
    p_request_hash text, p_hold_seconds integer)
returns table (outcome text, conversation_id uuid, balance integer, status text, reply text,
               error text, price integer, charged integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_overdue boolean;
    v_expired boolean := false;
    v_overdue_request text;
    v_prior_conversation uuid;
    v_prior_status text;
    v_prior_reply text;
    v_prior_error text;
    v_prior_cost integer;
    v_prior_hash text;
    v_prior_reserved integer;
    v_prior_charged integer;
    v_price tokenbill.prices;
    v_owner_ok boolean;
    v_conversation uuid := coalesce(p_conversation_id, gen_random_uuid());
    v_new integer;
    v_reserved integer;
    v_alert integer;
    v_topup integer;
    v_exchange_id bigint;
    v_ledger_id bigint;
begin
    if p_message is null or length(btrim(p_message)) = 0 or length(p_message) > 20000 then
        raise exception 'message must be 1 to 20000 characters' using errcode = 'TB003';
    end if;
    if p_request_id is null or length(p_request_id) not between 1 and 200 then
        raise exception 'request id must be 1 to 200 characters' using errcode = 'TB003';
    end if;
    if p_request_hash is null or length(p_request_hash) not between 1 and 200 then
        raise exception 'request hash is required' using errcode = 'TB003';
    end if;
    if p_hold_seconds is null or p_hold_seconds not between 1 and 86400 then
        raise exception 'hold must last 1 to 86400 seconds' using errcode = 'TB003';
    end if;

    for v_attempt in 1 .. 2 loop
        -- The reservation in plain statements (0039): the price (tokenbill.price_for's rule,
        -- inlined: a function call here would cost every request), the balance (only if it
        -- covers the price and the conversation, if any, is this user's; its row lock
        -- serialises this user's reservations from here to the commit), the exchange, and
        -- only if the exchange is new, its ledger row and the conversation. A twin that
        -- committed this request id first leaves the exchange alone (ON CONFLICT DO NOTHING),
        -- and the move is given back below.
        select p.* into v_price from tokenbill.prices p
         where p.agent in (p_agent, '*')
         order by p.agent = '*'
         limit 1;
        -- Two spellings on purpose: with "p_conversation_id is null or <owner check>" a
        -- request starting a conversation folds the test away in a custom plan, so plpgsql's
        -- plan cache kept planning the UPDATE afresh on every call (+104 k instructions).
        if p_conversation_id is null then
            update tokenbill.users u
               set balance = u.balance - v_price.max_per_call
             where u.id = p_user_id and u.balance >= v_price.max_per_call
            returning u.balance, u.low_balance_threshold, u.auto_topup_threshold
                 into v_new, v_alert, v_topup;
        else
            update tokenbill.users u
               set balance = u.balance - v_price.max_per_call
             where u.id = p_user_id and u.balance >= v_price.max_per_call
               and (select c.user_id from tokenbill.conversations c
                     where c.id = p_conversation_id) = p_user_id
            returning u.balance, u.low_balance_threshold, u.auto_topup_threshold
                 into v_new, v_alert, v_topup;
        end if;
        v_reserved := v_price.max_per_call;
        v_exchange_id := null;
        if v_new is not null then
            insert into tokenbill.exchanges (
                conversation_id, user_id, request_id, prompt, cost, request_hash, agent,
                per_call, per_1k_input, per_1k_output, reserved, hold_status, expires_at)
            values (v_conversation, p_user_id, p_request_id, p_message, v_reserved,
                    p_request_hash, p_agent, v_price.per_call, v_price.per_1k_input,
                    v_price.per_1k_output, v_reserved, 'held',
                    now() + make_interval(secs => p_hold_seconds))
            on conflict (user_id, request_id) do nothing
            returning id into v_exchange_id;
        end if;

        if v_exchange_id is not null then
            insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id,
                                          reason)
            values (p_user_id, 'reserve', -v_reserved, v_new, p_request_id,
                    format('agent %s: up to %s reserved', p_agent, v_reserved))
            returning id into v_ledger_id;
            if p_conversation_id is null then
                insert into tokenbill.conversations (id, user_id, title)
                values (v_conversation, p_user_id,
                        left(regexp_replace(btrim(p_message), '\s+', ' ', 'g'), 80));
            else
                update tokenbill.conversations c set updated_at = now()
                 where c.id = p_conversation_id;
            end if;
            -- post_entry's threshold check for a debit, inline: runs only when one is crossed
            if v_new + v_reserved >= least(v_alert, coalesce(v_topup, v_alert))
               and v_new < greatest(v_alert, coalesce(v_topup, v_alert)) then
                perform tokenbill.debit_crossed(p_user_id, v_ledger_id, v_new, -v_reserved,
                                                v_alert, v_topup);
            end if;
            -- the reservation needs no WAL flush of its own (0037): nothing of the answer
            -- reaches the client before a later synchronous commit flushes it too
            perform pg_catalog.set_config('synchronous_commit', 'off', true);
            outcome := 'started'; conversation_id := v_conversation; balance := v_new;
            status := 'pending'; price := v_reserved;
            return next;
            return;
        end if;
        if v_new is not null then
            -- this request id was taken first (a twin, a retry): give this move back
            update tokenbill.users u set balance = u.balance + v_reserved where u.id = p_user_id;
            if v_attempt = 2 then  -- taken between our look and the reservation: answer as it
                return query select * from api.begin_agent_request(
                    p_user_id, p_request_id, p_conversation_id, p_message, p_agent,
                    p_request_hash, p_hold_seconds);
                return;
            end if;
        end if;
        exit when v_attempt = 2;

        -- Not reserved: look why. The user, their overdue holds, this request id seen before,
        -- the conversation's owner: one statement (again after closing overdue holds, which
        -- may change this request's own outcome).
        for i in 1 .. 2 loop
            select u.balance,
                   exists (select from tokenbill.exchanges o
                            where o.user_id = p_user_id and o.hold_status = 'held'
                              and o.expires_at <= now()),
                   e.conversation_id, e.reply_status, e.reply, e.error, e.cost,
                   e.request_hash, e.reserved, e.charged,
                   p_conversation_id is null
                   or (select c.user_id from tokenbill.conversations c
                        where c.id = p_conversation_id) = p_user_id
              into v_balance, v_overdue, v_prior_conversation, v_prior_status, v_prior_reply,
                   v_prior_error, v_prior_cost, v_prior_hash, v_prior_reserved,
                   v_prior_charged, v_owner_ok
              from (select) one
              left join tokenbill.users u on u.id = p_user_id
              left join tokenbill.exchanges e
                on e.user_id = p_user_id and e.request_id = p_request_id;
            if v_balance is null then
                raise exception 'unknown user %', p_user_id using errcode = 'TB002';
            end if;
            exit when not v_overdue;
            -- a dead worker's holds are closed first (a retry then replays the expired outcome)
            perform tokenbill.lock_user(p_user_id);
            for v_overdue_request in
                select o.request_id from tokenbill.exchanges o
                 where o.user_id = p_user_id and o.hold_status = 'held'
                   and o.expires_at <= now()
                 order by o.id
            loop
                perform tokenbill.expire_hold(p_user_id, v_overdue_request);
                v_expired := true;
            end loop;
        end loop;

        if v_prior_status is not null then
            if v_prior_hash is not null and v_prior_hash <> p_request_hash then
                outcome := 'mismatch'; conversation_id := v_prior_conversation;
                balance := v_balance; price := v_prior_reserved;
                return next;
                return;
            end if;
            outcome := 'replayed'; conversation_id := v_prior_conversation;
            balance := v_balance; status := v_prior_status; reply := v_prior_reply;
            error := v_prior_error; price := coalesce(v_prior_reserved, v_prior_cost);
            charged := v_prior_charged;
            return next;
            return;
        end if;
        if not v_owner_ok then
            raise exception 'unknown conversation %', p_conversation_id using errcode = 'TB002';
        end if;
        v_price := tokenbill.price_for(p_agent);  -- the rule the reservation inlines; TB002
        -- short, unless closing overdue holds (or a concurrent settle) gave tokens back
        exit when not v_expired and v_balance < v_price.max_per_call;
    end loop;

    outcome := 'insufficient_tokens'; conversation_id := p_conversation_id;
    balance := v_balance; price := v_price.max_per_call;
    return next;
end
$$;

