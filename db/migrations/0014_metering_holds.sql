/*
 * 0014 — metering that cannot be gamed: prices in the database, reserve → settle holds.
 *
 * An agent request no longer pays a flat token up front and gets it back on any trouble.
 * It RESERVES the most its call may cost (tokenbill.prices.max_per_call) before the model
 * runs, and is SETTLED when it ends:
 *   - something reached the client (a computed JSON reply, or a streamed part) → charged its
 *     price (ledger 'settle' row returns the unused rest of the reservation, possibly 0);
 *   - nothing reached the client → RELEASED (ledger 'release' row returns all of it).
 * Streaming workers record delivery progress on the hold (first_delivered_at, parts, chars)
 * BEFORE handing a part to the server, so the database knows whether output was sent even
 * when the worker is killed. A hold never settled expires at expires_at by the same rule:
 * charged if first_delivered_at is set (price of the recorded progress), released otherwise.
 * tokenbill.post_entry stays the only writer of balances; every movement is a ledger row.
 *
 * The app role's surface changes: api.begin_agent_request gets a new signature (price key,
 * request hash, hold length), api.record_agent_delivery / api.settle_agent_request /
 * api.expire_agent_holds / api.agent_price are new; api.finish_agent_request,
 * api.fail_agent_request and api.expire_agent_requests are dropped (one settle function with a
 * status guard replaces the finish/fail pair and their race); api.consume and api.release are
 * left to operators and benchmarks (the web app no longer calls them).
 *
 * New enum values may not be used in the transaction that adds them, so constraints, the
 * trigger condition and SQL-language bodies below compare kind::text.
 */

-- ============================================================================================
-- Ledger kinds and constraints
-- ============================================================================================
alter type tokenbill.ledger_kind add value 'reserve';  -- tokens held for a running agent request
alter type tokenbill.ledger_kind add value 'settle';   -- the request ended delivering: unused rest back (may be 0)
alter type tokenbill.ledger_kind add value 'release';  -- the request ended delivering nothing: all of it back

alter table tokenbill.ledger drop constraint ledger_delta_check;
alter table tokenbill.ledger drop constraint ledger_delta_sign;
alter table tokenbill.ledger drop constraint ledger_request_id_required;
alter table tokenbill.ledger
    add constraint ledger_delta_sign check (
        (kind::text in ('purchase', 'consumption_refund', 'clawback_reversal', 'release') and delta > 0)
        or (kind::text in ('consumption', 'clawback', 'reserve') and delta < 0)
        or (kind::text = 'settle' and delta >= 0)
        or (kind::text = 'admin_adjustment' and delta <> 0)),
    add constraint ledger_request_id_required check (
        kind::text not in ('consumption', 'consumption_refund', 'reserve', 'settle', 'release')
        or request_id is not null);

comment on column tokenbill.ledger.delta is
    'Tokens moved. A settle row may be 0: the request was charged all it reserved.';


-- a reservation can take a balance below the user's alert threshold, like a consumption did
drop trigger ledger_low_balance_alert on tokenbill.ledger;
create trigger ledger_low_balance_alert
    after insert on tokenbill.ledger
    for each row when (new.kind::text in ('consumption', 'reserve'))
    execute function tokenbill.record_low_balance_alert();

-- ============================================================================================
-- Prices
-- ============================================================================================
create table tokenbill.prices (
    agent          text primary key check (length(agent) between 1 and 200),
    per_call       integer not null default 1 check (per_call >= 0),
    per_1k_input   integer not null default 0 check (per_1k_input >= 0),
    per_1k_output  integer not null default 0 check (per_1k_output >= 0),
    max_per_call   integer not null check (max_per_call >= 1 and max_per_call >= per_call),
    note           text,
    updated_at     timestamptz not null default now()
);

comment on table tokenbill.prices is
    'What an agent request costs, per agent price key (LLM model name or agent name); ''*'' applies to the rest and must stay. '
    'cost = least(max_per_call, per_call + ceil(input_tokens * per_1k_input / 1000) + ceil(output_tokens * per_1k_output / 1000)), '
    'tokens estimated as ceil(characters / 4). A request reserves max_per_call before it runs.';

insert into tokenbill.prices (agent, per_call, max_per_call, note)
values ('*', 1, 1, 'one token per interaction');

/** The price row for an agent price key, else the '*' row; TB002 when neither exists. */
create function tokenbill.price_for(p_agent text) returns tokenbill.prices
language plpgsql stable set search_path = '' as $$
declare
    v_price tokenbill.prices;
begin
    select * into v_price from tokenbill.prices p
     where p.agent in (p_agent, '*')
     order by p.agent = '*'
     limit 1;
    if not found then
        raise exception 'no price for agent % and no ''*'' price', p_agent using errcode = 'TB002';
    end if;
    return v_price;
end
$$;

/** What a call with these sizes costs under these price terms (the written rule above). */
create function tokenbill.price_of(
    p_per_call integer, p_per_1k_input integer, p_per_1k_output integer, p_max_per_call integer,
    p_input_chars integer, p_output_chars integer
) returns integer
language sql immutable set search_path = '' as $$
    select least(
        p_max_per_call,
        p_per_call
        + ceil(ceil(greatest(p_input_chars, 0) / 4.0) * p_per_1k_input / 1000.0)::integer
        + ceil(ceil(greatest(p_output_chars, 0) / 4.0) * p_per_1k_output / 1000.0)::integer);
$$;

/** The price of an agent's requests, for the chat page and the 402/200 bodies. */
create function api.agent_price(p_agent text)
returns table (agent text, per_call integer, per_1k_input integer, per_1k_output integer,
               max_per_call integer, label text)
language plpgsql stable security definer set search_path = '' as $$
declare
    v tokenbill.prices;
begin
    v := tokenbill.price_for(p_agent);
    return query select v.agent, v.per_call, v.per_1k_input, v.per_1k_output, v.max_per_call,
        case
            when v.per_1k_input = 0 and v.per_1k_output = 0 then
                v.per_call || ' token' || case when v.per_call = 1 then '' else 's' end
            else
                v.per_call || ' + ' || v.per_1k_input || '/1k input + ' || v.per_1k_output
                || '/1k output model tokens, at most ' || v.max_per_call || ' token'
                || case when v.max_per_call = 1 then '' else 's' end
        end;
end
$$;

-- ============================================================================================
-- Holds
-- ============================================================================================
create table tokenbill.agent_holds (
    id                  bigint generated always as identity primary key,
    user_id             uuid not null references tokenbill.users (id),
    request_id          text not null check (length(request_id) between 1 and 200),
    request_hash        text not null check (length(request_hash) between 1 and 200),
    agent               text not null,
    per_call            integer not null,
    per_1k_input        integer not null,
    per_1k_output       integer not null,
    reserved            integer not null check (reserved > 0),
    status              text not null default 'held' check (status in ('held', 'settled', 'released')),
    input_chars         integer not null default 0 check (input_chars >= 0),
    delivered_parts     integer not null default 0 check (delivered_parts >= 0),
    delivered_chars     integer not null default 0 check (delivered_chars >= 0),
    first_delivered_at  timestamptz,
    progress_at         timestamptz,
    created_at          timestamptz not null default now(),
    expires_at          timestamptz not null,
    settled_at          timestamptz,
    charged             integer check (charged between 0 and reserved),
    outcome             text,
    constraint agent_holds_request_once unique (user_id, request_id),
    constraint agent_holds_closed check (
        (status = 'held' and settled_at is null and charged is null)
        or (status = 'settled' and settled_at is not null and charged is not null)
        or (status = 'released' and settled_at is not null and charged = 0))
);
create index agent_holds_open_idx on tokenbill.agent_holds (expires_at) where status = 'held';
create index agent_holds_user_open_idx on tokenbill.agent_holds (user_id, expires_at) where status = 'held';

comment on table tokenbill.agent_holds is
    'One row per agent request: tokens reserved, how much was delivered, how it ended and what it cost. '
    'status held → settled (charged, ledger ''settle'') or released (nothing delivered, ledger ''release'').';
comment on column tokenbill.agent_holds.request_hash is 'SHA-256 of the request body: a reused Idempotency-Key with another body is refused.';
comment on column tokenbill.agent_holds.first_delivered_at is 'Set before the first streamed part is handed to the server: output was (being) sent.';
comment on column tokenbill.agent_holds.expires_at is 'A hold still held now is settled by the expiry rule: charged if first_delivered_at is set, else released.';
comment on column tokenbill.agent_holds.outcome is 'done, partial, failed, timeout, disconnected, or expired.';

alter table tokenbill.messages drop constraint messages_status_check;
alter table tokenbill.messages add constraint messages_status_check
    check (status in ('pending', 'done', 'partial', 'failed', 'timeout'));
comment on table tokenbill.messages is
    'Chat messages. The assistant row of a request id is that request''s outcome: pending, done (with the reply), '
    'partial (stopped after delivering part of it; charged), failed or timeout (nothing delivered; released).';

/**
 * Close a locked, held hold: charge its price when something was delivered, else release it.
 * The caller holds the user's lock and the hold row's. Returns the tokens charged.
 */
create function tokenbill.close_hold(
    p_hold tokenbill.agent_holds, p_delivered boolean, p_output_chars integer,
    p_input_chars integer, p_outcome text, p_parts integer default null
) returns integer
language plpgsql set search_path = '' as $$
declare
    v_charged integer := 0;
    v_input integer := greatest(coalesce(p_input_chars, 0), p_hold.input_chars);
    v_output integer := greatest(coalesce(p_output_chars, 0), p_hold.delivered_chars);
begin
    if p_delivered then
        v_charged := tokenbill.price_of(p_hold.per_call, p_hold.per_1k_input, p_hold.per_1k_output,
                                        p_hold.reserved, v_input, v_output);
        perform tokenbill.post_entry(
            p_hold.user_id, 'settle', p_hold.reserved - v_charged, p_allow_negative => true,
            p_request_id => p_hold.request_id,
            p_reason => format('%s: charged %s of %s reserved', p_outcome, v_charged, p_hold.reserved));
    else
        perform tokenbill.post_entry(
            p_hold.user_id, 'release', p_hold.reserved, p_allow_negative => true,
            p_request_id => p_hold.request_id,
            p_reason => format('%s: nothing delivered, %s reserved returned', p_outcome, p_hold.reserved));
    end if;
    update tokenbill.agent_holds h
       set status = case when p_delivered then 'settled' else 'released' end,
           charged = v_charged, settled_at = now(), outcome = p_outcome,
           input_chars = v_input, delivered_chars = v_output,
           delivered_parts = greatest(h.delivered_parts, coalesce(p_parts, 0))
     where h.id = p_hold.id;
    return v_charged;
end
$$;

/**
 * Settle one overdue hold by the expiry rule (its worker died or never reported): charged when
 * first_delivered_at is set, released otherwise. The caller holds the user's lock. Returns
 * whether it was still held.
 */
create function tokenbill.expire_hold(p_hold_id bigint) returns boolean
language plpgsql set search_path = '' as $$
declare
    v_hold tokenbill.agent_holds;
    v_delivered boolean;
begin
    select * into v_hold from tokenbill.agent_holds h
     where h.id = p_hold_id and h.status = 'held' and h.expires_at <= now()
       for update;
    if not found then
        return false;
    end if;
    v_delivered := v_hold.first_delivered_at is not null;
    perform tokenbill.close_hold(v_hold, v_delivered, v_hold.delivered_chars, v_hold.input_chars,
                                 'expired');
    update tokenbill.messages m
       set status = case when v_delivered then 'partial' else 'timeout' end,
           error = format('expired: the worker stopped after delivering %s part(s)',
                          v_hold.delivered_parts),
           completed_at = now()
     where m.user_id = v_hold.user_id and m.request_id = v_hold.request_id
       and m.role = 'assistant' and m.status = 'pending';
    return true;
end
$$;

-- ============================================================================================
-- The agent request API (replaces 0007's begin/finish/fail/expire)
-- ============================================================================================
/*
 * Requests left pending by 0007's path have no hold: nothing recorded whether their output was
 * delivered, so by the expiry rule they are released (api.release, their 'consumption' given
 * back as 'consumption_refund') and marked timeout, before the functions that would have
 * finished them go away.
 */
do $$
declare
    v_row record;
begin
    for v_row in
        select m.user_id, m.request_id from tokenbill.messages m
         where m.role = 'assistant' and m.status = 'pending'
           and not exists (select from tokenbill.agent_holds h
                            where h.user_id = m.user_id and h.request_id = m.request_id)
         order by m.id
    loop
        perform api.release(v_row.user_id, v_row.request_id,
                            'released at the upgrade to holds (0014): delivery unknown');
        update tokenbill.messages m
           set status = 'timeout', completed_at = now(),
               error = 'released at the upgrade to reserve/settle (0014)'
         where m.user_id = v_row.user_id and m.request_id = v_row.request_id
           and m.role = 'assistant' and m.status = 'pending';
    end loop;
end
$$;

drop function api.begin_agent_request(uuid, text, uuid, text, integer);
drop function api.finish_agent_request(uuid, text, text);
drop function api.fail_agent_request(uuid, text, text, boolean);
drop function api.expire_agent_requests(interval);
revoke execute on function api.consume(uuid, text, integer) from tokenbill_app;
revoke execute on function api.release(uuid, text, text) from tokenbill_app;

/**
 * Reserve an agent request's maximum price and record it, or say why it cannot run.
 * First settles this user's overdue holds (a dead worker's request never blocks its retry).
 * outcome 'started': max_per_call reserved (ledger 'reserve'), hold and messages stored.
 * outcome 'insufficient_tokens': nothing reserved, nothing stored.
 * outcome 'replayed': this request id was seen with the same body hash; status/reply/error/
 * charged are the first call's. outcome 'mismatch': same request id, different body: nothing
 * charged (the client reused a key). A conversation that is not the user's is TB002.
 * price is what this request reserves (its most), charged what a finished one cost.
 */
create function api.begin_agent_request(
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
        perform tokenbill.expire_hold(v_overdue);
    end loop;
    select u.balance into v_balance from tokenbill.users u where u.id = p_user_id;

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

/**
 * Record how much of a streamed reply is about to reach the client (parts and characters so
 * far; the first call sets first_delivered_at). Called BEFORE the part is handed over, so a
 * killed worker's hold knows output was sent. Never lowers what was recorded. Returns false
 * (and records nothing) when the hold is no longer held or its time is up: stop streaming.
 */
create function api.record_agent_delivery(
    p_user_id uuid, p_request_id text, p_parts integer, p_chars integer, p_input_chars integer
) returns boolean
language sql security definer set search_path = '' as $$
    with touched as (
        update tokenbill.agent_holds h
           set delivered_parts = greatest(h.delivered_parts, coalesce(p_parts, 0)),
               delivered_chars = greatest(h.delivered_chars, coalesce(p_chars, 0)),
               input_chars = greatest(h.input_chars, coalesce(p_input_chars, 0)),
               first_delivered_at = coalesce(h.first_delivered_at, now()),
               progress_at = now()
         where h.user_id = p_user_id and h.request_id = p_request_id and h.status = 'held'
           and h.expires_at > now()
        returning 1)
    select exists (select from touched);
$$;

/**
 * Settle a request however it ended. p_outcome: 'done' (the agent finished), 'failed',
 * 'timeout' or 'disconnected' (the client left mid-stream). p_reply is everything that
 * reached (or, for a computed JSON reply, will reach) the client, in p_parts parts.
 *   - delivered (p_reply non-empty, or the hold recorded a first delivery): charged its price,
 *     message 'done' when the agent finished, else 'partial' with what was delivered;
 *   - nothing delivered: released, message 'failed' / 'timeout'.
 * Status guard: a hold that is no longer held (settled already, e.g. by expiry) is left as it
 * is and status is 'already_settled' with the first settlement's result. TB002: no such request.
 * Returns the message status, the tokens charged and the balance after.
 */
create function api.settle_agent_request(
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
    update tokenbill.messages m
       set content = v_reply, status = v_status, completed_at = now(),
           error = case when p_outcome = 'done' then null
                        else left(coalesce(p_error, p_outcome), 1000) end
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant'
       and m.status = 'pending';
    update tokenbill.conversations c set updated_at = now()
      from tokenbill.messages m
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant'
       and c.id = m.conversation_id;

    return query select 'settled'::text, v_status, v_charged, u.balance
                   from tokenbill.users u where u.id = p_user_id;
end
$$;

/**
 * Settle every hold past its expires_at by the expiry rule (see tokenbill.expire_hold), one
 * user lock at a time. Run by the app's periodic sweep and by operators. Returns how many.
 */
create function api.expire_agent_holds()
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_row record;
    v_count integer := 0;
begin
    for v_row in
        select h.id, h.user_id from tokenbill.agent_holds h
         where h.status = 'held' and h.expires_at <= now()
         order by h.id
    loop
        perform tokenbill.lock_user(v_row.user_id);
        if tokenbill.expire_hold(v_row.id) then
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end
$$;

-- ============================================================================================
-- Views, stats and the audit
-- ============================================================================================
create view api.agent_holds as
    select id, user_id, request_id, agent, reserved, status, input_chars, delivered_parts,
           delivered_chars, first_delivered_at, progress_at, created_at, expires_at, settled_at,
           charged, outcome
      from tokenbill.agent_holds;
comment on view api.agent_holds is 'Agent request holds: reserved, delivered, charged. The app filters by user_id.';

create view api.prices as
    select agent, per_call, per_1k_input, per_1k_output, max_per_call, note, updated_at
      from tokenbill.prices;
comment on view api.prices is 'The price table (read-only here; operators edit tokenbill.prices).';

create or replace view api.messages as
    select m.id, m.conversation_id, m.user_id, m.request_id, m.role, m.content, m.status, m.error,
           m.cost, m.created_at, m.completed_at, h.charged
      from tokenbill.messages m
      left join tokenbill.agent_holds h
        on h.user_id = m.user_id and h.request_id = m.request_id and m.role = 'assistant';
comment on view api.messages is 'Chat messages with the outcome of each agent request; charged is what it cost (null while running).';

grant select on api.agent_holds, api.prices, api.messages to tokenbill_app, tokenbill_admin;

/**
 * Tokens consumed per day now count settled agent requests: reservations minus what settle and
 * release rows gave back, plus direct api.consume charges net of their refunds.
 */
create or replace function api.daily_stats(p_days integer default 30)
returns table (day date, tokens_sold bigint, tokens_consumed bigint, revenue_cents bigint,
               sessions_created bigint, sessions_paid bigint)
language sql stable security definer set search_path = '' as $$
    with days as (
        select generate_series((now() at time zone 'utc')::date - (least(greatest(p_days, 1), 366) - 1),
                               (now() at time zone 'utc')::date, interval '1 day')::date as day),
    sold as (
        select (granted_at at time zone 'utc')::date as day, sum(tokens_granted) as tokens,
               sum(amount_cents - refunded_cents) as cents
          from tokenbill.payments
         where status = 'granted' and granted_at >= (select min(day) from days)
         group by 1),
    consumed as (
        select (created_at at time zone 'utc')::date as day, -sum(delta) as tokens
          from tokenbill.ledger
         where kind::text in ('consumption', 'consumption_refund', 'reserve', 'settle', 'release')
           and created_at >= (select min(day) from days)
         group by 1),
    sessions as (
        select (created_at at time zone 'utc')::date as day, count(*) as created,
               count(*) filter (where payment_status = 'paid') as paid
          from tokenbill.checkout_sessions
         where created_at >= (select min(day) from days)
         group by 1)
    select d.day, coalesce(s.tokens, 0), coalesce(c.tokens, 0),
           coalesce(s.cents, 0), coalesce(x.created, 0), coalesce(x.paid, 0)
      from days d
      left join sold s on s.day = d.day
      left join consumed c on c.day = d.day
      left join sessions x on x.day = d.day
     order by d.day;
$$;

/**
 * Every user whose balance disagrees with their ledger (the sum of deltas, or the latest
 * balance_after), and every agent hold whose ledger rows disagree with it: a held hold has
 * exactly its reserve row, a closed one also exactly one settle/release row, and the request's
 * net movement is -reserved while held, -charged once closed; hold rows without a hold are
 * reported too. Must always return no rows.
 */
drop function api.ledger_audit();
create function api.ledger_audit()
returns table (user_id uuid, balance integer, ledger_sum bigint, last_balance_after integer,
               request_id text, problem text)
language sql stable security definer set search_path = '' as $$
    select u.id, u.balance, coalesce(s.total, 0), s.last_after, null::text,
           'balance disagrees with the ledger'
      from tokenbill.users u
      left join lateral (
            select sum(l.delta) as total,
                   (select l2.balance_after from tokenbill.ledger l2
                     where l2.user_id = u.id order by l2.id desc limit 1) as last_after
              from tokenbill.ledger l
             where l.user_id = u.id) s on true
     where u.balance <> coalesce(s.total, 0)
        or u.balance is distinct from coalesce(s.last_after, 0)
    union all
    select coalesce(h.user_id, m.user_id), null::integer, coalesce(m.net, 0), null::integer,
           coalesce(h.request_id, m.request_id),
           case when h.id is null then
                     format('%s reserve and %s settle/release rows without a hold',
                            m.reserves, m.closes)
                else format('hold %s (%s, reserved %s, charged %s): %s reserve, %s settle/release rows, net %s',
                            h.id, h.status, h.reserved, h.charged, coalesce(m.reserves, 0),
                            coalesce(m.closes, 0), coalesce(m.net, 0)) end
      from tokenbill.agent_holds h
      full join (
            -- one pass over the ledger's hold rows (no per-hold lookups: the audit scans anyway)
            select l.user_id, l.request_id,
                   count(*) filter (where l.kind::text = 'reserve') as reserves,
                   count(*) filter (where l.kind::text in ('settle', 'release')) as closes,
                   sum(l.delta) as net
              from tokenbill.ledger l
             where l.kind::text in ('reserve', 'settle', 'release')
             group by l.user_id, l.request_id) m
        on m.user_id = h.user_id and m.request_id = h.request_id
     where h.id is null
        or coalesce(m.reserves, 0) <> 1
        or coalesce(m.closes, 0) <> case when h.status = 'held' then 0 else 1 end
        or coalesce(m.net, 0) <> case when h.status = 'held' then -h.reserved else -h.charged end;
$$;

-- ============================================================================================
-- Privileges: exactly what the web app calls
-- ============================================================================================
revoke all on function tokenbill.price_for(text) from public;
revoke all on function tokenbill.price_of(integer, integer, integer, integer, integer, integer) from public;
revoke all on function tokenbill.close_hold(tokenbill.agent_holds, boolean, integer, integer, text, integer) from public;
revoke all on function tokenbill.expire_hold(bigint) from public;
revoke all on function api.agent_price(text) from public;
revoke all on function api.begin_agent_request(uuid, text, uuid, text, text, text, integer) from public;
revoke all on function api.record_agent_delivery(uuid, text, integer, integer, integer) from public;
revoke all on function api.settle_agent_request(uuid, text, text, text, integer, text, integer) from public;
revoke all on function api.expire_agent_holds() from public;
revoke all on function api.ledger_audit() from public;

grant execute on function api.agent_price(text) to tokenbill_app;
grant execute on function api.begin_agent_request(uuid, text, uuid, text, text, text, integer) to tokenbill_app;
grant execute on function api.record_agent_delivery(uuid, text, integer, integer, integer) to tokenbill_app;
grant execute on function api.settle_agent_request(uuid, text, text, text, integer, text, integer) to tokenbill_app;
grant execute on function api.expire_agent_holds() to tokenbill_app;
grant execute on function api.ledger_audit() to tokenbill_admin;  -- 0013: admin pages only
