/*
 * 0007 — conversations and messages of the metered agent.
 *
 * One agent request = one user message + one assistant message sharing a request id (the
 * client's Idempotency-Key, unique per user). The assistant message is the record of the
 * request: 'pending' while the agent runs, then 'done' with the reply, or 'failed'/'timeout'
 * with the token released. Starting a request charges its token (api.consume) in the same
 * transaction that stores the messages, so a charge without a record (or the reverse) cannot
 * exist, and a retried request finds the first one's outcome instead of paying again.
 */

-- ============================================================================================
-- Tables
-- ============================================================================================
create table tokenbill.conversations (
    id          uuid primary key default gen_random_uuid(),
    user_id     uuid not null references tokenbill.users (id),
    title       text not null check (length(title) between 1 and 200),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index conversations_user_idx on tokenbill.conversations (user_id, updated_at desc);

comment on table tokenbill.conversations is 'A user''s chat threads with the agent; titled by their first message.';

create table tokenbill.messages (
    id               bigint generated always as identity primary key,
    conversation_id  uuid not null references tokenbill.conversations (id),
    user_id          uuid not null references tokenbill.users (id),
    request_id       text not null check (length(request_id) between 1 and 200),
    role             text not null check (role in ('user', 'assistant')),
    content          text not null default '',
    status           text not null check (status in ('pending', 'done', 'failed', 'timeout')),
    error            text,
    cost             integer not null check (cost > 0),
    created_at       timestamptz not null default now(),
    completed_at     timestamptz,
    constraint messages_user_message_done check (role = 'assistant' or status = 'done'),
    constraint messages_request_once unique (user_id, request_id, role)
);
create index messages_conversation_idx on tokenbill.messages (conversation_id, id);
create index messages_pending_idx on tokenbill.messages (created_at) where status = 'pending';

comment on table tokenbill.messages is
    'Chat messages. The assistant row of a request id is that request''s outcome: pending, done (with the reply), failed or timeout (token released).';
comment on column tokenbill.messages.request_id is 'Idempotency key of the agent request; also the ledger request_id of its consumption.';
comment on column tokenbill.messages.error is 'Why the agent failed (for operators); the user sees a generic message.';

-- ============================================================================================
-- api.begin_agent_request
-- ============================================================================================
/**
 * Charge one agent request and record it, or report why it cannot run.
 * outcome 'started': tokens taken, messages stored (assistant 'pending'); run the agent.
 * outcome 'insufficient_tokens': nothing charged, nothing stored.
 * outcome 'replayed': this request id was seen before; status/reply/error are the first
 * call's (still 'pending' when it is running). A conversation that is not the user's is TB002.
 */
create function api.begin_agent_request(
    p_user_id uuid,
    p_request_id text,
    p_conversation_id uuid,
    p_message text,
    p_cost integer default 1
) returns table (
    outcome text, conversation_id uuid, balance integer, status text, reply text, error text
)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_prior tokenbill.messages;
    v_conversation uuid := p_conversation_id;
    v_charge record;
begin
    if p_message is null or length(btrim(p_message)) = 0 or length(p_message) > 20000 then
        raise exception 'message must be 1 to 20000 characters' using errcode = 'TB003';
    end if;

    -- one request of a user at a time: a concurrent retry waits here, then sees the first row
    v_balance := tokenbill.lock_user(p_user_id);

    select * into v_prior from tokenbill.messages m
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant';
    if found then
        return query select 'replayed'::text, v_prior.conversation_id, v_balance, v_prior.status,
                            v_prior.content, v_prior.error;
        return;
    end if;

    if v_conversation is not null then
        perform from tokenbill.conversations c
         where c.id = v_conversation and c.user_id = p_user_id;
        if not found then
            raise exception 'unknown conversation %', v_conversation using errcode = 'TB002';
        end if;
    end if;

    select * into v_charge from api.consume(p_user_id, p_request_id, p_cost);
    if not v_charge.ok then
        return query select 'insufficient_tokens'::text, v_conversation, v_charge.balance,
                            null::text, null::text, null::text;
        return;
    end if;
    if v_charge.reason = 'replayed' then
        -- charged by someone calling api.consume directly with this id: not ours to reuse
        raise exception 'request id % was already used', p_request_id using errcode = 'TB004';
    end if;

    if v_conversation is null then
        insert into tokenbill.conversations (user_id, title)
        values (p_user_id, left(regexp_replace(btrim(p_message), '\s+', ' ', 'g'), 80))
        returning id into v_conversation;
    else
        update tokenbill.conversations c set updated_at = now() where c.id = v_conversation;
    end if;

    insert into tokenbill.messages (conversation_id, user_id, request_id, role, content, status, cost)
    values (v_conversation, p_user_id, p_request_id, 'user', p_message, 'done', p_cost),
           (v_conversation, p_user_id, p_request_id, 'assistant', '', 'pending', p_cost);

    return query select 'started'::text, v_conversation, v_charge.balance, 'pending'::text,
                        null::text, null::text;
end
$$;

revoke all on function api.begin_agent_request(uuid, text, uuid, text, integer) from public;
grant execute on function api.begin_agent_request(uuid, text, uuid, text, integer) to tokenbill_app;

-- ============================================================================================
-- api.finish_agent_request
-- ============================================================================================
/**
 * Store the reply of a pending request. TB002 when there is no such request; TB004 when it is
 * no longer pending (it failed or was expired, and its token went back): the reply is dropped.
 */
create function api.finish_agent_request(p_user_id uuid, p_request_id text, p_reply text)
returns table (conversation_id uuid, balance integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_message tokenbill.messages;
begin
    select * into v_message from tokenbill.messages m
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant'
       for update;
    if not found then
        raise exception 'unknown agent request %', p_request_id using errcode = 'TB002';
    end if;
    if v_message.status <> 'pending' then
        raise exception 'agent request % is already %', p_request_id, v_message.status
            using errcode = 'TB004';
    end if;

    update tokenbill.messages m
       set content = coalesce(p_reply, ''), status = 'done', completed_at = now()
     where m.id = v_message.id;
    update tokenbill.conversations c set updated_at = now() where c.id = v_message.conversation_id;

    return query select v_message.conversation_id, u.balance
                   from tokenbill.users u where u.id = p_user_id;
end
$$;

revoke all on function api.finish_agent_request(uuid, text, text) from public;
grant execute on function api.finish_agent_request(uuid, text, text) to tokenbill_app;

-- ============================================================================================
-- api.fail_agent_request
-- ============================================================================================
/**
 * Mark a pending request failed (or timed out) and give its token back, atomically.
 * Idempotent: a second call changes nothing. status is api.release's ('released',
 * 'already_released'); 'not_pending' when the request had already finished successfully.
 */
create function api.fail_agent_request(
    p_user_id uuid, p_request_id text, p_error text, p_timed_out boolean default false
) returns table (status text, balance integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_message tokenbill.messages;
begin
    perform tokenbill.lock_user(p_user_id);
    select * into v_message from tokenbill.messages m
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant';
    if not found then
        raise exception 'unknown agent request %', p_request_id using errcode = 'TB002';
    end if;
    if v_message.status = 'done' then
        return query select 'not_pending'::text, u.balance
                       from tokenbill.users u where u.id = p_user_id;
        return;
    end if;

    if v_message.status = 'pending' then
        update tokenbill.messages m
           set status = case when p_timed_out then 'timeout' else 'failed' end,
               error = left(coalesce(p_error, 'agent failed'), 1000),
               completed_at = now()
         where m.id = v_message.id;
    end if;

    return query select r.status, r.balance
                   from api.release(p_user_id, p_request_id,
                                    case when p_timed_out then 'agent timed out'
                                         else 'agent request failed' end) r;
end
$$;

revoke all on function api.fail_agent_request(uuid, text, text, boolean) from public;
grant execute on function api.fail_agent_request(uuid, text, text, boolean) to tokenbill_app;

-- ============================================================================================
-- api.expire_agent_requests
-- ============================================================================================
/**
 * Fail and refund requests still pending after p_older_than (their worker died mid-run), so a
 * crash never keeps a user's token and a retry stops answering "in progress". Returns how many.
 */
create function api.expire_agent_requests(p_older_than interval)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_row record;
    v_count integer := 0;
begin
    for v_row in
        select m.user_id, m.request_id from tokenbill.messages m
         where m.status = 'pending' and m.role = 'assistant'
           and m.created_at < now() - p_older_than
         order by m.id
    loop
        perform api.fail_agent_request(v_row.user_id, v_row.request_id,
                                       'expired: the worker never finished', true);
        v_count := v_count + 1;
    end loop;
    return v_count;
end
$$;

revoke all on function api.expire_agent_requests(interval) from public;
grant execute on function api.expire_agent_requests(interval) to tokenbill_app;

-- ============================================================================================
-- Read-only views
-- ============================================================================================
create view api.conversations as
    select id, user_id, title, created_at, updated_at from tokenbill.conversations;
comment on view api.conversations is 'Chat threads; the app always filters by user_id.';

create view api.messages as
    select id, conversation_id, user_id, request_id, role, content, status, error, cost,
           created_at, completed_at
      from tokenbill.messages;
comment on view api.messages is 'Chat messages with the outcome of each agent request.';

grant select on api.conversations, api.messages to tokenbill_app;
