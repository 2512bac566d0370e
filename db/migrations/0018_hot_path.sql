/*
 * 0018 — a leaner billing hot path, proven by scripts/bench_pgbench.py (docs/performance.md).
 *
 * Same signatures, same results, same guarantees; less work per movement:
 *   - tokenbill.post_entry stays the only writer of balances. It now also records the
 *     low-balance alert itself, only when the movement crosses the user's threshold (the
 *     threshold comes back from the UPDATE it already runs), so the per-row plpgsql trigger of
 *     0009/0014 (a function call and a users lookup on every consumption and reserve) is gone.
 *   - api.consume keeps its lock-then-look-up order (0004). A variant without the separate
 *     row lock (replay lookup first, INSERT … ON CONFLICT DO NOTHING catching a racing twin)
 *     was measured side by side and was slower on one hot account in every round, with no
 *     gain spread over accounts (docs/performance.md), so it is not here.
 *   - the ledger's reporting index (created_at, kind), one more B-tree entry on every insert,
 *     becomes a BRIN index on created_at: the ledger is append-only, so created_at follows the
 *     physical order and api.daily_stats' date range still finds its blocks.
 *   - api.settle_agent_request updates the assistant message and its conversation in one
 *     statement; api.begin_agent_request re-reads the balance only when it expired a hold.
 *   - messages_pending_idx is dropped: since 0014 nothing looks for pending messages by time
 *     (the expiry sweep finds holds by agent_holds_open_idx), and with no index on status
 *     settling the assistant message can be a HOT update (messages keep 10 % of each page
 *     free for it).
 */

-- ============================================================================================
-- Low-balance alerts move into the one writer
-- ============================================================================================
drop trigger ledger_low_balance_alert on tokenbill.ledger;
drop function tokenbill.record_low_balance_alert();

/**
 * Move p_delta tokens for a user and append the ledger row, in one place, so that
 * users.balance always equals the sum of the user's ledger deltas.
 * Returns the new balance, or NULL (and changes nothing) when the balance would drop below
 * zero and p_allow_negative is false. A consumption or reserve that takes the
 * balance from at or above the user's low-balance threshold to below it records one alert.
 */
create or replace function tokenbill.post_entry(
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
    v_threshold integer;
    v_ledger_id bigint;
begin
    update tokenbill.users
       set balance = balance + p_delta
     where id = p_user_id
       and (p_allow_negative or balance + p_delta >= 0)
    returning balance, low_balance_threshold into v_balance, v_threshold;
    if not found then
        return null;
    end if;

    insert into tokenbill.ledger (
        user_id, kind, delta, balance_after, request_id, payment_id, checkout_session_id,
        payment_intent_id, charge_id, dispute_id, stripe_event_id, reason, actor_id)
    values (
        p_user_id, p_kind, p_delta, v_balance, p_request_id, p_payment_id,
        p_checkout_session_id, p_payment_intent_id, p_charge_id, p_dispute_id,
        p_stripe_event_id, p_reason, p_actor_id)
    returning id into v_ledger_id;

    if v_balance < v_threshold and v_balance - p_delta >= v_threshold
       and p_kind::text in ('consumption', 'reserve') then
        insert into tokenbill.low_balance_alerts (user_id, ledger_id, threshold, balance)
        values (p_user_id, v_ledger_id, v_threshold, v_balance);
    end if;
    return v_balance;
end
$$;

-- ============================================================================================
-- The reporting index off the hot path's B-trees
-- ============================================================================================
drop index tokenbill.ledger_created_kind_idx;
create index ledger_created_brin on tokenbill.ledger using brin (created_at);

drop index tokenbill.messages_pending_idx;
alter table tokenbill.messages set (fillfactor = 90);

-- ============================================================================================
-- The agent request: same contract as 0014, fewer statements
-- ============================================================================================
create or replace function api.begin_agent_request(
    p_user_id uuid,
    p_request_id text,
    p_conversation_id uuid,
    p_message text,
    p_agent text,
    p_request_hash text,
    p_hold_seconds integer
) returns table (
    outcome text, conversation_id uuid, balance integer, status text, reply text, error text,
    price integer, charged integer
)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_prior tokenbill.messages;
    v_hold tokenbill.agent_holds;
    v_price tokenbill.prices;
    v_conversation uuid := p_conversation_id;
    v_new integer;
    v_overdue bigint;
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

    -- one request of a user at a time: a concurrent retry waits here, then sees the first row
    v_balance := tokenbill.lock_user(p_user_id);
    for v_overdue in
        select h.id from tokenbill.agent_holds h
         where h.user_id = p_user_id and h.status = 'held' and h.expires_at <= now()
         order by h.id
    loop
        if tokenbill.expire_hold(v_overdue) then
            select u.balance into v_balance from tokenbill.users u where u.id = p_user_id;
        end if;
    end loop;

    select * into v_prior from tokenbill.messages m
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant';
    if found then
        select * into v_hold from tokenbill.agent_holds h
         where h.user_id = p_user_id and h.request_id = p_request_id;
        if found and v_hold.request_hash <> p_request_hash then
            return query select 'mismatch'::text, v_prior.conversation_id, v_balance,
                                null::text, null::text, null::text, v_hold.reserved, null::integer;
            return;
        end if;
        return query select 'replayed'::text, v_prior.conversation_id, v_balance, v_prior.status,
                            v_prior.content, v_prior.error, coalesce(v_hold.reserved, v_prior.cost),
                            v_hold.charged;
        return;
    end if;

    if v_conversation is not null then
        perform from tokenbill.conversations c
         where c.id = v_conversation and c.user_id = p_user_id;
        if not found then
            raise exception 'unknown conversation %', v_conversation using errcode = 'TB002';
        end if;
    end if;

    v_price := tokenbill.price_for(p_agent);
    v_new := tokenbill.post_entry(p_user_id, 'reserve', -v_price.max_per_call,
                                  p_request_id => p_request_id,
                                  p_reason => format('agent %s: up to %s reserved', p_agent,
                                                     v_price.max_per_call));
    if v_new is null then
        return query select 'insufficient_tokens'::text, v_conversation, v_balance, null::text,
                            null::text, null::text, v_price.max_per_call, null::integer;
        return;
    end if;

    insert into tokenbill.agent_holds (user_id, request_id, request_hash, agent, per_call,
                                       per_1k_input, per_1k_output, reserved, expires_at)
    values (p_user_id, p_request_id, p_request_hash, p_agent, v_price.per_call,
            v_price.per_1k_input, v_price.per_1k_output, v_price.max_per_call,
            now() + make_interval(secs => p_hold_seconds));

    if v_conversation is null then
        insert into tokenbill.conversations (user_id, title)
        values (p_user_id, left(regexp_replace(btrim(p_message), '\s+', ' ', 'g'), 80))
        returning id into v_conversation;
    else
        update tokenbill.conversations c set updated_at = now() where c.id = v_conversation;
    end if;

    insert into tokenbill.messages (conversation_id, user_id, request_id, role, content, status, cost)
    values (v_conversation, p_user_id, p_request_id, 'user', p_message, 'done', v_price.max_per_call),
           (v_conversation, p_user_id, p_request_id, 'assistant', '', 'pending', v_price.max_per_call);

    return query select 'started'::text, v_conversation, v_new, 'pending'::text,
                        null::text, null::text, v_price.max_per_call, null::integer;
end
$$;

create or replace function api.settle_agent_request(
    p_user_id uuid, p_request_id text, p_outcome text, p_reply text, p_input_chars integer,
    p_error text default null, p_parts integer default null
) returns table (status text, message_status text, charged integer, balance integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_hold tokenbill.agent_holds;
    v_delivered boolean;
    v_status text;
    v_charged integer;
    v_reply text := coalesce(p_reply, '');
begin
    if p_outcome is null or p_outcome not in ('done', 'failed', 'timeout', 'disconnected') then
        raise exception 'outcome must be done, failed, timeout or disconnected' using errcode = 'TB003';
    end if;
    perform tokenbill.lock_user(p_user_id);
    select * into v_hold from tokenbill.agent_holds h
     where h.user_id = p_user_id and h.request_id = p_request_id
       for update;
    if not found then
        raise exception 'unknown agent request %', p_request_id using errcode = 'TB002';
    end if;

    if v_hold.status <> 'held' then
        return query select 'already_settled'::text, m.status, v_hold.charged, u.balance
                       from tokenbill.users u, tokenbill.messages m
                      where u.id = p_user_id and m.user_id = p_user_id
                        and m.request_id = p_request_id and m.role = 'assistant';
        return;
    end if;

    v_delivered := length(v_reply) > 0 or v_hold.first_delivered_at is not null;
    v_status := case when not v_delivered then
                          case when p_outcome = 'timeout' then 'timeout' else 'failed' end
                     when p_outcome = 'done' then 'done'
                     else 'partial' end;
    v_charged := tokenbill.close_hold(v_hold, v_delivered, length(v_reply), p_input_chars,
                                      case when v_delivered and p_outcome <> 'done'
                                           then p_outcome || ' (partial)' else p_outcome end,
                                      p_parts);
    with closed as (
        update tokenbill.messages m
           set content = v_reply, status = v_status, completed_at = now(),
               error = case when p_outcome = 'done' then null
                            else left(coalesce(p_error, p_outcome), 1000) end
         where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant'
           and m.status = 'pending'
        returning m.conversation_id)
    update tokenbill.conversations c set updated_at = now()
      from closed where c.id = closed.conversation_id;

    return query select 'settled'::text, v_status, v_charged, u.balance
                   from tokenbill.users u where u.id = p_user_id;
end
$$;

-- ============================================================================================
-- Comments (0016's rule: every object documented in the database)
-- ============================================================================================
comment on function tokenbill.post_entry(uuid,tokenbill.ledger_kind,integer,boolean,text,bigint,text,text,text,text,text,text,uuid) is
    'The only writer of balances: moves p_delta and appends the ledger row. NULL (nothing changed) when it would overdraw without p_allow_negative. Records the low-balance alert when a consumption or reserve crosses the user''s threshold.';
comment on index tokenbill.ledger_created_brin is
    'api.daily_stats'' date ranges: BRIN, since the append-only ledger is in created_at order (0018 replaced the (created_at, kind) B-tree).';
