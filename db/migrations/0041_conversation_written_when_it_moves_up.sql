/*
 * 0041 — a request writes its conversation only when the conversation moves up the list
 * (issue 16: one agent request).
 *
 * Since 0007 every request continuing a conversation set its updated_at, the chat list's
 * order. conversations_user_idx is (user_id, updated_at desc), so that touch was a non-HOT
 * update: a new row version and two index entries, about 99,000 instructions of an agent
 * request's 1,227,000 (bench_instructions; docs/performance.md). Dropping it would lose the
 * list's order; keeping it only where the order changes does not:
 *
 *   - api.begin_agent_request looks up the user's newest conversation (one index probe, after
 *     the balance's UPDATE took the user's row lock, so every earlier request of this user is
 *     in what it sees) and touches the conversation only when it is another one. A chat going
 *     on in its newest conversation, the common case, writes no conversation row; a request in
 *     an older one moves it to the top as before. The list's order is the same in every case
 *     (tests/db/test_lean_agent_request.py). What changes is updated_at's meaning: when the
 *     conversation last moved to the top, not when it last had a request (nothing shows it;
 *     the chat page only orders by it).
 *   - The price by its key, then '*' (two index probes at most, no sort); the reservation's
 *     commit without a flush by an assignment, not a PERFORM (no SPI query for it).
 *   - api.settle_agent_request reads the balance by its own SELECT after the exchange's
 *     UPDATE, not by a subquery in its RETURNING: the same value (the user's row is not
 *     locked by the fast settle either way), fewer instructions.
 *
 * Effect (bench_instructions, 300 calls, 1,000 accounts; 0040's two functions applied as a
 * --variant to the same warmed copy): an agent request continuing a conversation 1,229,218 →
 * 1,161,242 instructions (−5.5 %), one starting a conversation 1,251,797 → 1,221,462
 * (−2.4 %); agent request / the seed's whole request 0.68 → 0.72. Of the −68 k, the touch
 * left out is −46 k (the look that replaces it costs about half of the 99 k the touch did),
 * the price −12 k, the settle's balance −11 k, the assignment −6 k.
 * Nothing else changes: the same exchange and ledger rows, in the same order, under the same
 * locks.
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
    v_newest uuid;
    v_flush text;
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
        -- inlined: a function call here would cost every request; by its key, then '*',
        -- since 0041: two index probes at most, no sort), the balance (only if it
        -- covers the price and the conversation, if any, is this user's; its row lock
        -- serialises this user's reservations from here to the commit), the exchange, and
        -- only if the exchange is new, its ledger row and the conversation. A twin that
        -- committed this request id first leaves the exchange alone (ON CONFLICT DO NOTHING),
        -- and the move is given back below.
        select p.* into v_price from tokenbill.prices p where p.agent = p_agent;
        if not found then
            select p.* into v_price from tokenbill.prices p where p.agent = '*';
        end if;
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
                -- moved to the top of the user's list only when it is not there already
                -- (0041): the list's order is the same, and a chat going on in its newest
                -- conversation writes no conversation row (a non-HOT update, two index
                -- entries). The look runs after the balance's UPDATE took the user's row
                -- lock, so every earlier request of this user is in what it sees.
                select c.id into v_newest from tokenbill.conversations c
                 where c.user_id = p_user_id order by c.updated_at desc limit 1;
                if v_newest is distinct from p_conversation_id then
                    update tokenbill.conversations c set updated_at = now()
                     where c.id = p_conversation_id;
                end if;
            end if;
            -- post_entry's threshold check for a debit, inline: runs only when one is crossed
            if v_new + v_reserved >= least(v_alert, coalesce(v_topup, v_alert))
               and v_new < greatest(v_alert, coalesce(v_topup, v_alert)) then
                perform tokenbill.debit_crossed(p_user_id, v_ledger_id, v_new, -v_reserved,
                                                v_alert, v_topup);
            end if;
            -- the reservation needs no WAL flush of its own (0037): nothing of the answer
            -- reaches the client before a later synchronous commit flushes it too
            v_flush := pg_catalog.set_config('synchronous_commit', 'off', true);
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

create or replace function api.settle_agent_request(
    p_user_id uuid, p_request_id text, p_outcome text, p_reply text, p_input_chars integer,
    p_error text default null, p_parts integer default null)
returns table (status text, message_status text, charged integer, balance integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_exchange tokenbill.exchanges;
    v_reply text := coalesce(p_reply, '');
    v_delivered boolean;
begin
    if p_outcome is null or p_outcome not in ('done', 'failed', 'timeout', 'disconnected') then
        raise exception 'outcome must be done, failed, timeout or disconnected' using errcode = 'TB003';
    end if;

    -- charged all it reserved (the common case): the exchange alone, one UPDATE; the balance
    -- by its own SELECT (0041: cheaper than a subquery in the RETURNING)
    update tokenbill.exchanges e
       set hold_status = 'settled', charged = e.reserved, settled_at = now(),
           outcome = case when p_outcome = 'done' then 'done' else p_outcome || ' (partial)' end,
           input_chars = greatest(e.input_chars, coalesce(p_input_chars, 0)),
           delivered_chars = greatest(e.delivered_chars, length(v_reply)),
           delivered_parts = greatest(e.delivered_parts, coalesce(p_parts, 0)),
           reply = v_reply,
           reply_status = case when p_outcome = 'done' then 'done' else 'partial' end,
           error = case when p_outcome = 'done' then null
                        else left(coalesce(p_error, p_outcome), 1000) end,
           completed_at = now()
     where e.user_id = p_user_id and e.request_id = p_request_id and e.hold_status = 'held'
       and (length(v_reply) > 0 or e.first_delivered_at is not null)
       and (e.per_call >= e.reserved
            or tokenbill.price_of(e.per_call, e.per_1k_input, e.per_1k_output, e.reserved,
                                  greatest(e.input_chars, coalesce(p_input_chars, 0)),
                                  greatest(e.delivered_chars, length(v_reply))) = e.reserved)
    returning e.reserved, e.reply_status
         into charged, message_status;
    if found then
        select u.balance into balance from tokenbill.users u where u.id = p_user_id;
        status := 'settled';
        return next;
        return;
    end if;

    -- money moves (or the hold is closed already, or unknown): the user first, then the exchange
    perform tokenbill.lock_user(p_user_id);
    select * into v_exchange from tokenbill.exchanges e
     where e.user_id = p_user_id and e.request_id = p_request_id
       for update;
    if not found then
        raise exception 'unknown agent request %', p_request_id using errcode = 'TB002';
    end if;
    if v_exchange.hold_status is distinct from 'held' then
        return query select 'already_settled'::text, v_exchange.reply_status, v_exchange.charged,
                            u.balance
                       from tokenbill.users u where u.id = p_user_id;
        return;
    end if;
    v_delivered := length(v_reply) > 0 or v_exchange.first_delivered_at is not null;
    message_status := case when not v_delivered then
                                case when p_outcome = 'timeout' then 'timeout' else 'failed' end
                           when p_outcome = 'done' then 'done'
                           else 'partial' end;
    charged := tokenbill.close_hold(
        v_exchange, v_delivered, length(v_reply), p_input_chars,
        case when v_delivered and p_outcome <> 'done' then p_outcome || ' (partial)'
             else p_outcome end,
        p_parts, v_reply, message_status,
        case when p_outcome = 'done' then null else left(coalesce(p_error, p_outcome), 1000) end);
    select u.balance into balance from tokenbill.users u where u.id = p_user_id;
    status := 'settled';
    return next;
end
$$;

comment on column tokenbill.conversations.updated_at is
    'Orders the user''s chat list, newest first: set when the conversation starts and when a '
    'request continues it while another conversation is on top of the list (0041); a request '
    'continuing the conversation on top leaves it as it is.';
