/*
 * 0037 — a reservation's commit does not wait for its WAL flush (issue 16: one agent request).
 *
 * An agent request commits twice: api.begin_agent_request (the reservation) before the model
 * runs, api.settle_agent_request after it. Each commit waited for its WAL to reach the disk,
 * and at one client that wait is on the request's path: ≈ 0.2 ms of a request's 1.3–1.7 ms of
 * database time on this machine (pgbench -c 1, six alternating pairs: 0.17 to 0.32 ms less in
 * every pair), a fsync being 180–190 µs here (pg_test_fsync).
 *
 * Only the reservation's commit stops waiting, and only when it reserved: begin sets
 * synchronous_commit off for its own transaction. Why nothing can then be served free:
 *
 *   - WAL is one sequence. A later synchronous commit on any connection flushes everything
 *     before it, this reservation included.
 *   - Nothing of the answer reaches the client before such a commit: a streamed answer
 *     records its delivery (api.record_agent_delivery, synchronous) before its first part is
 *     handed over; a JSON answer is sent only after api.settle_agent_request (synchronous)
 *     returned — webapp/metering.py and the Edge Function (db/edge-functions/agent-meter)
 *     both, tests/webapp/test_agent_wire.py checks the order.
 *   - So a crash can lose only a reservation whose answer nobody received. The client's call
 *     then fails (its settle or delivery record cannot run) and its retry with the same
 *     request id starts again; the balance is as if the request never began. What we lose
 *     is the model's work for an answer never delivered, in a crash of the database.
 *
 * Everything else still commits synchronously: settles, delivery records, grants, consume,
 * refunds (api.consume is one durable transaction whose answer is the charge itself).
 * A begin that only replays, refuses, or closes a dead worker's overdue holds changes nothing
 * either: the setting is made after the reservation, in the branch that returns 'started'.
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
        -- The reservation in one statement: the price (tokenbill.price_for's rule, inlined:
        -- a function call here would cost every request), the balance (only if it covers the
        -- price and the conversation, if any, is this user's), the exchange, and hanging off
        -- the exchange's INSERT its ledger row and the conversation. Nothing of it is written
        -- when a twin committed this request id first (ON CONFLICT DO NOTHING) but the move.
        with price as (
            select p.per_call, p.per_1k_input, p.per_1k_output, p.max_per_call
              from tokenbill.prices p
             where p.agent in (p_agent, '*')
             order by p.agent = '*'
             limit 1),
        moved as (
            update tokenbill.users u
               set balance = u.balance - pr.max_per_call
              from price pr
             where u.id = p_user_id and u.balance >= pr.max_per_call
               and (p_conversation_id is null
                    or (select c.user_id from tokenbill.conversations c
                         where c.id = p_conversation_id) = p_user_id)
            returning u.balance, u.low_balance_threshold, u.auto_topup_threshold, pr.per_call,
                      pr.per_1k_input, pr.per_1k_output, pr.max_per_call),
        exchange as (
            insert into tokenbill.exchanges (
                conversation_id, user_id, request_id, prompt, cost, request_hash, agent,
                per_call, per_1k_input, per_1k_output, reserved, hold_status, expires_at)
            select v_conversation, p_user_id, p_request_id, p_message, m.max_per_call,
                   p_request_hash, p_agent, m.per_call, m.per_1k_input, m.per_1k_output,
                   m.max_per_call, 'held', now() + make_interval(secs => p_hold_seconds)
              from moved m
            on conflict (user_id, request_id) do nothing
            returning id),
        entry as (
            insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id,
                                          reason)
            select p_user_id, 'reserve', -m.max_per_call, m.balance, p_request_id,
                   format('agent %s: up to %s reserved', p_agent, m.max_per_call)
              from moved m, exchange x
            returning id),
        started as (
            insert into tokenbill.conversations (id, user_id, title)
            select v_conversation, p_user_id,
                   left(regexp_replace(btrim(p_message), '\s+', ' ', 'g'), 80)
              from exchange
             where p_conversation_id is null),
        touched as (
            update tokenbill.conversations c set updated_at = now()
              from exchange
             where p_conversation_id is not null and c.id = p_conversation_id)
        select m.balance, m.max_per_call, m.low_balance_threshold, m.auto_topup_threshold,
               x.id, l.id
          into v_new, v_reserved, v_alert, v_topup, v_exchange_id, v_ledger_id
          from moved m
          left join exchange x on true
          left join entry l on true;

        if v_exchange_id is not null then
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

comment on function api.begin_agent_request(uuid, text, uuid, text, text, text, integer) is
    'Reserve an agent request''s maximum price and record it, or say why it cannot run. First '
    'settles this user''s overdue holds (a dead worker''s request never blocks its retry). '
    'outcome ''started'': max_per_call reserved (ledger ''reserve''), the exchange stored; its '
    'commit does not wait for the WAL flush (0037: the delivery record or the settle that '
    'precedes any answer flushes it). outcome ''insufficient_tokens'': nothing reserved, '
    'nothing stored. outcome ''replayed'': this request id was seen with the same body hash; '
    'status/reply/error/charged are the first call''s. outcome ''mismatch'': same request id, '
    'different body: nothing charged (the client reused a key). A conversation that is not the '
    'user''s is TB002. price is what this request reserves (its most), charged what a finished '
    'one cost.';
