/*
 * 0021 — one agent request's database work, leaner (workshop/bench_pgbench.py, docs/performance.md).
 *
 * Same signatures, same answers, same guarantees (idempotency with body-hash mismatch, replay,
 * no overdraft, reserve → settle, the expiry rule, an empty audit); less work per request:
 *
 *   - A settlement that moves no money (charged == reserved: the default price, and every
 *     per-size price that reached its maximum) neither locks nor updates the user and writes
 *     no 0-delta 'settle' ledger row: it closes the hold (status guard in the UPDATE itself)
 *     and the assistant message. Money moves only on a 'release' or a 'settle' that returns
 *     part of the reservation; those keep the old order (user, then hold). Lock order: the
 *     fast path takes the hold, then the message — the same order as every other path
 *     (user → hold → message), so it cannot deadlock with the expiry. The audit accepts a
 *     settled hold with charged == reserved and no settle row (still net = -charged).
 *   - The conversation is touched once per request, when it begins (not again at settle).
 *   - CHECK constraints: PostgreSQL 15 re-reads every CHECK's stored expression on every
 *     INSERT/UPDATE; nine on agent_holds and five on messages were the largest single cost
 *     of the path (ExecConstraints ≈ 12 % of server CPU). Each table now has ONE CHECK calling
 *     an immutable plpgsql function with the same rules (tokenbill.agent_hold_is_valid,
 *     tokenbill.message_is_valid); a broken row is still refused with SQLSTATE 23514.
 *   - price_of and record_agent_delivery were SQL-language functions with SET clauses (never
 *     inlined, so re-planned on every call); they are plpgsql now (plans cached per session).
 *   - begin_agent_request runs fewer statements: the user's lock inline (no lock_user call),
 *     the overdue-hold and replay probes, the price and the conversation's owner in one
 *     statement, the answer returned without a final SELECT (settle likewise).
 *   - messages.user_id, messages.conversation_id and agent_holds.user_id lose their foreign
 *     keys (see below for the controls that replace them); agent_holds keeps one partial
 *     index of open holds instead of two.
 */

-- ============================================================================================
-- One CHECK per table
-- ============================================================================================
/**
 * Every rule of an agent hold row in one function (one CHECK costs one expression per row,
 * nine cost nine). False, never NULL, so a broken row is refused.
 */
create function tokenbill.agent_hold_is_valid(
    p_request_id text, p_request_hash text, p_reserved integer, p_status text,
    p_input_chars integer, p_delivered_parts integer, p_delivered_chars integer,
    p_settled_at timestamptz, p_charged integer
) returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    return coalesce(
        length(p_request_id) between 1 and 200
        and length(p_request_hash) between 1 and 200
        and p_reserved > 0
        and p_input_chars >= 0 and p_delivered_parts >= 0 and p_delivered_chars >= 0
        and case p_status
                when 'held' then p_settled_at is null and p_charged is null
                when 'settled' then p_settled_at is not null and p_charged between 0 and p_reserved
                when 'released' then p_settled_at is not null and p_charged = 0
                else false
            end,
        false);
end
$$;

/** Every rule of a chat message row in one function; false, never NULL, for a broken row. */
create function tokenbill.message_is_valid(
    p_request_id text, p_role text, p_status text, p_cost integer
) returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    return coalesce(
        length(p_request_id) between 1 and 200
        and p_cost > 0
        and case p_role
                when 'user' then p_status = 'done'
                when 'assistant' then p_status in ('pending', 'done', 'partial', 'failed', 'timeout')
                else false
            end,
        false);
end
$$;

alter table tokenbill.agent_holds
    drop constraint agent_holds_check,
    drop constraint agent_holds_closed,
    drop constraint agent_holds_delivered_chars_check,
    drop constraint agent_holds_delivered_parts_check,
    drop constraint agent_holds_input_chars_check,
    drop constraint agent_holds_request_hash_check,
    drop constraint agent_holds_request_id_check,
    drop constraint agent_holds_reserved_check,
    drop constraint agent_holds_status_check,
    add constraint agent_holds_valid check (tokenbill.agent_hold_is_valid(
        request_id, request_hash, reserved, status, input_chars, delivered_parts,
        delivered_chars, settled_at, charged));

alter table tokenbill.messages
    drop constraint messages_cost_check,
    drop constraint messages_request_id_check,
    drop constraint messages_role_check,
    drop constraint messages_status_check,
    drop constraint messages_user_message_done,
    add constraint messages_valid check (tokenbill.message_is_valid(request_id, role, status, cost));

-- ============================================================================================
-- Two foreign keys that begin_agent_request makes redundant
-- ============================================================================================
/*
 * messages.user_id and agent_holds.user_id referenced tokenbill.users: each costs one RI query
 * per inserted row (three per request) plus a KEY SHARE lock on the user's row version that
 * the same transaction has just updated. Their rows are written only by
 * api.begin_agent_request (no role but the owner may write these tables: 0013), which in the
 * same transaction locks and updates that user's row and writes the reserve ledger row, and
 * puts the messages in a conversation it checked (or created) as that user's. So every hold
 * and message names an existing user, and that user is never deleted: 0020's
 * users_never_deleted / users_never_truncated triggers (and conversations.user_id still
 * references users). tests/db/test_lean_agent_request.py checks both (a user with a request
 * cannot be deleted; every message's user is its conversation's user).
 */
alter table tokenbill.messages drop constraint messages_user_id_fkey;
-- messages.conversation_id likewise (two RI queries per request, and a KEY SHARE lock on the
-- conversation row version begin has just written): begin inserts the conversation, or
-- checks it is the user's and updates it, in the same transaction as its messages; what the
-- foreign key also did — refuse deleting a conversation that has messages — a trigger now
-- does for every conversation (nothing in tokenbill deletes one).
alter table tokenbill.messages drop constraint messages_conversation_id_fkey;

-- Conversations are never deleted (their messages are the record of what was charged): the
-- same guard as users and payments (0020).
create trigger conversations_kept
    before delete on tokenbill.conversations
    for each row execute function tokenbill.forbid_history_delete();
create trigger conversations_not_truncated
    before truncate on tokenbill.conversations
    for each statement execute function tokenbill.forbid_history_delete();
comment on trigger conversations_kept on tokenbill.conversations is
    'A conversation is never deleted: its messages keep their conversation without a foreign key (0021).';
comment on trigger conversations_not_truncated on tokenbill.conversations is
    'A conversation is never deleted, TRUNCATE included (0021).';
comment on column tokenbill.messages.conversation_id is
    'The request''s conversation: created or checked as the user''s by api.begin_agent_request in the same transaction. No foreign key since 0021; conversations are never deleted (trigger conversations_kept).';
alter table tokenbill.agent_holds drop constraint agent_holds_user_id_fkey;
comment on column tokenbill.messages.user_id is
    'The conversation''s user (api.begin_agent_request checks it). No foreign key since 0021: users are never deleted (0020''s users_never_deleted) and the conversation''s key references the user.';
comment on column tokenbill.agent_holds.user_id is
    'The user whose balance the hold reserved from (begin updated that user''s row in the same transaction). No foreign key since 0021: users are never deleted (0020''s users_never_deleted).';

-- ============================================================================================
-- One partial index of open holds, not two
-- ============================================================================================
/*
 * agent_holds_open_idx (expires_at) and agent_holds_user_open_idx (user_id, expires_at) both
 * held exactly the open holds; one more index entry on every begin for the minutely sweep.
 * The sweep (status = 'held' and expires_at <= now()) scans agent_holds_user_open_idx whole:
 * it holds only open holds (requests in flight), whatever the table's size.
 */
drop index tokenbill.agent_holds_open_idx;
comment on index tokenbill.agent_holds_user_open_idx is
    'Open holds: a user''s overdue ones (begin_agent_request) and, scanned whole, everyone''s (api.expire_agent_holds). Only requests in flight are in it (0021 dropped agent_holds_open_idx).';

-- ============================================================================================
-- Prices and delivery progress in plpgsql (cached plans)
-- ============================================================================================
create or replace function tokenbill.price_of(
    p_per_call integer, p_per_1k_input integer, p_per_1k_output integer, p_max_per_call integer,
    p_input_chars integer, p_output_chars integer
) returns integer
language plpgsql immutable set search_path = '' as $$
begin
    return least(
        p_max_per_call,
        p_per_call
        + ceil(ceil(greatest(p_input_chars, 0) / 4.0) * p_per_1k_input / 1000.0)::integer
        + ceil(ceil(greatest(p_output_chars, 0) / 4.0) * p_per_1k_output / 1000.0)::integer);
end
$$;

create or replace function api.record_agent_delivery(
    p_user_id uuid, p_request_id text, p_parts integer, p_chars integer, p_input_chars integer
) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
    update tokenbill.agent_holds h
       set delivered_parts = greatest(h.delivered_parts, coalesce(p_parts, 0)),
           delivered_chars = greatest(h.delivered_chars, coalesce(p_chars, 0)),
           input_chars = greatest(h.input_chars, coalesce(p_input_chars, 0)),
           first_delivered_at = coalesce(h.first_delivered_at, now()),
           progress_at = now()
     where h.user_id = p_user_id and h.request_id = p_request_id and h.status = 'held'
       and h.expires_at > now();
    return found;
end
$$;

-- ============================================================================================
-- Closing a hold: a ledger row only when money moves
-- ============================================================================================
create or replace function tokenbill.close_hold(
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
        if v_charged < p_hold.reserved then  -- charged all it reserved: nothing to give back
            perform tokenbill.post_entry(
                p_hold.user_id, 'settle', p_hold.reserved - v_charged, p_allow_negative => true,
                p_request_id => p_hold.request_id,
                p_reason => format('%s: charged %s of %s reserved', p_outcome, v_charged,
                                   p_hold.reserved));
        end if;
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

-- ============================================================================================
-- The agent request
-- ============================================================================================
/*
 * Statements per call are the cost that is left (each one an executor start and end inside
 * plpgsql), so: the overdue-hold probe, the replay probe, the price and the conversation's
 * owner are one statement, and the answer is assigned to the OUT columns (RETURN
 * NEXT) instead of a final SELECT. The user's row lock still comes first: a concurrent retry
 * of the same key waits on it and then sees the first request's rows (a later snapshot).
 */
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
    v_overdue boolean;
    v_hold_id bigint;
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
    v_conversation uuid := p_conversation_id;
    v_new integer;
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
    select u.balance into v_balance from tokenbill.users u where u.id = p_user_id for update;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;

    for i in 1 .. 2 loop
        -- this user's overdue holds, this request id seen before, the price and whether the
        -- conversation (if any) is this user's: one look
        select exists (select from tokenbill.agent_holds o
                        where o.user_id = p_user_id and o.status = 'held' and o.expires_at <= now()),
               m.conversation_id, m.status, m.content, m.error, m.cost,
               h.request_hash, h.reserved, h.charged,
               pr.agent, pr.per_call, pr.per_1k_input, pr.per_1k_output, pr.max_per_call,
               p_conversation_id is null
               or exists (select from tokenbill.conversations c
                           where c.id = p_conversation_id and c.user_id = p_user_id)
          into v_overdue, v_prior_conversation, v_prior_status, v_prior_reply, v_prior_error,
               v_prior_cost, v_prior_hash, v_prior_reserved, v_prior_charged,
               v_price.agent, v_price.per_call, v_price.per_1k_input, v_price.per_1k_output,
               v_price.max_per_call, v_owner_ok
          from (select) one
          left join tokenbill.messages m
            on m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant'
          left join tokenbill.agent_holds h
            on h.user_id = p_user_id and h.request_id = p_request_id
          left join lateral (
                select p.agent, p.per_call, p.per_1k_input, p.per_1k_output, p.max_per_call
                  from tokenbill.prices p
                 where p.agent in (p_agent, '*')
                 order by p.agent = '*'
                 limit 1) pr on true;
        exit when not v_overdue;
        -- a dead worker's holds are settled first (a retry then replays the expired outcome)
        for v_hold_id in
            select o.id from tokenbill.agent_holds o
             where o.user_id = p_user_id and o.status = 'held' and o.expires_at <= now()
             order by o.id
        loop
            perform tokenbill.expire_hold(v_hold_id);
        end loop;
        select u.balance into v_balance from tokenbill.users u where u.id = p_user_id;
    end loop;

    if v_prior_status is not null then
        if v_prior_hash is not null and v_prior_hash <> p_request_hash then
            outcome := 'mismatch'; conversation_id := v_prior_conversation;
            balance := v_balance; price := v_prior_reserved;
            return next;
            return;
        end if;
        outcome := 'replayed'; conversation_id := v_prior_conversation; balance := v_balance;
        status := v_prior_status; reply := v_prior_reply; error := v_prior_error;
        price := coalesce(v_prior_reserved, v_prior_cost); charged := v_prior_charged;
        return next;
        return;
    end if;

    if not v_owner_ok then
        raise exception 'unknown conversation %', p_conversation_id using errcode = 'TB002';
    end if;
    if v_price.agent is null then
        raise exception 'no price for agent % and no ''*'' price', p_agent using errcode = 'TB002';
    end if;

    v_new := tokenbill.post_entry(p_user_id, 'reserve', -v_price.max_per_call,
                                  p_request_id => p_request_id,
                                  p_reason => format('agent %s: up to %s reserved', p_agent,
                                                     v_price.max_per_call));
    if v_new is null then
        outcome := 'insufficient_tokens'; conversation_id := v_conversation;
        balance := v_balance; price := v_price.max_per_call;
        return next;
        return;
    end if;

    insert into tokenbill.agent_holds (user_id, request_id, request_hash, agent, per_call,
                                       per_1k_input, per_1k_output, reserved, expires_at)
    values (p_user_id, p_request_id, p_request_hash, p_agent, v_price.per_call,
            v_price.per_1k_input, v_price.per_1k_output, v_price.max_per_call,
            now() + make_interval(secs => p_hold_seconds));

    -- the conversation's one touch per request (settle no longer touches it)
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

    outcome := 'started'; conversation_id := v_conversation; balance := v_new;
    status := 'pending'; price := v_price.max_per_call;
    return next;
end
$$;

/*
 * The common ending — something was delivered and the price is all that was reserved (the
 * default price, or a per-size price at its maximum) — is ONE UPDATE of the hold, guarded by
 * status = 'held' in its WHERE, with no user lock and no ledger row: no money moves. Delivery
 * progress only grows and the price only grows with it (capped at reserved), so a concurrent
 * progress write cannot lower that charge. Every other ending moves money and keeps 0014's
 * order: lock the user, then the hold (the expiry's order), status guard, close_hold. The fast
 * path takes the hold's row and then the message's, the order every path uses after the
 * user's, so it cannot deadlock with an expiry running under the user's lock.
 */
create or replace function api.settle_agent_request(
    p_user_id uuid, p_request_id text, p_outcome text, p_reply text, p_input_chars integer,
    p_error text default null, p_parts integer default null
) returns table (status text, message_status text, charged integer, balance integer)
language plpgsql security definer set search_path = '' as $$
declare
    v_hold tokenbill.agent_holds;
    v_delivered boolean := true;
    v_status text;
    v_reply text := coalesce(p_reply, '');
begin
    if p_outcome is null or p_outcome not in ('done', 'failed', 'timeout', 'disconnected') then
        raise exception 'outcome must be done, failed, timeout or disconnected' using errcode = 'TB003';
    end if;

    update tokenbill.agent_holds h
       set status = 'settled', charged = h.reserved, settled_at = now(),
           outcome = case when p_outcome = 'done' then 'done' else p_outcome || ' (partial)' end,
           input_chars = greatest(h.input_chars, coalesce(p_input_chars, 0)),
           delivered_chars = greatest(h.delivered_chars, length(v_reply)),
           delivered_parts = greatest(h.delivered_parts, coalesce(p_parts, 0))
     where h.user_id = p_user_id and h.request_id = p_request_id and h.status = 'held'
       and (length(v_reply) > 0 or h.first_delivered_at is not null)
       and (h.per_call >= h.reserved
            or tokenbill.price_of(h.per_call, h.per_1k_input, h.per_1k_output, h.reserved,
                                  greatest(h.input_chars, coalesce(p_input_chars, 0)),
                                  greatest(h.delivered_chars, length(v_reply))) = h.reserved)
    returning h.reserved into charged;

    if not found then
        -- money moves (or the hold is closed already, or unknown): the user first, then the hold
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
        charged := tokenbill.close_hold(v_hold, v_delivered, length(v_reply), p_input_chars,
                                        case when v_delivered and p_outcome <> 'done'
                                             then p_outcome || ' (partial)' else p_outcome end,
                                        p_parts);
    end if;

    v_status := case when not v_delivered then
                          case when p_outcome = 'timeout' then 'timeout' else 'failed' end
                     when p_outcome = 'done' then 'done'
                     else 'partial' end;
    update tokenbill.messages m
       set content = v_reply, status = v_status, completed_at = now(),
           error = case when p_outcome = 'done' then null
                        else left(coalesce(p_error, p_outcome), 1000) end
     where m.user_id = p_user_id and m.request_id = p_request_id and m.role = 'assistant'
       and m.status = 'pending'
    returning (select u.balance from tokenbill.users u where u.id = p_user_id) into balance;
    if not found then
        select u.balance into balance from tokenbill.users u where u.id = p_user_id;
    end if;
    status := 'settled';
    message_status := v_status;
    return next;
end
$$;

-- ============================================================================================
-- The audit: a settled hold that charged all it reserved needs no settle row
-- ============================================================================================
create or replace function api.ledger_audit()
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
        or coalesce(m.closes, 0) <> case
               when h.status = 'held' then 0
               -- charged all it reserved: no settle row since 0021 (a 0-delta one before)
               when h.status = 'settled' and h.charged = h.reserved
                    then least(coalesce(m.closes, 0), 1)
               else 1 end
        or coalesce(m.net, 0) <> case when h.status = 'held' then -h.reserved else -h.charged end;
$$;

-- ============================================================================================
-- Privileges and comments
-- ============================================================================================
revoke all on function tokenbill.agent_hold_is_valid(text, text, integer, text, integer, integer, integer, timestamptz, integer) from public;
revoke all on function tokenbill.message_is_valid(text, text, text, integer) from public;

comment on function tokenbill.agent_hold_is_valid(text, text, integer, text, integer, integer, integer, timestamptz, integer) is
    'The rules of an agent_holds row (one CHECK: agent_holds_valid): request id and hash 1-200 characters, reserved > 0, progress >= 0; held has no settled_at/charged, settled has both (0..reserved), released charged 0.';
comment on function tokenbill.message_is_valid(text, text, text, integer) is
    'The rules of a messages row (one CHECK: messages_valid): request id 1-200 characters, cost > 0, role user (always done) or assistant (pending, done, partial, failed, timeout).';
comment on constraint agent_holds_valid on tokenbill.agent_holds is
    'All of a hold''s rules in one CHECK (0021: one function call instead of nine expressions per write).';
comment on constraint messages_valid on tokenbill.messages is
    'All of a message''s rules in one CHECK (0021: one function call instead of five expressions per write).';
comment on function tokenbill.close_hold(tokenbill.agent_holds, boolean, integer, integer, text, integer) is
    'Close a locked, held hold: charge its price when something was delivered (a settle row returns the unused rest; none when it charged all it reserved), else release it (release row). The caller holds the user''s lock and the hold''s. Returns the tokens charged.';
comment on function api.settle_agent_request(uuid, text, text, text, integer, text, integer) is
    'Settle a request however it ended: charged when delivered (message done/partial), released when not (failed/timeout). When it charges all it reserved no money moves: only the hold and the message are closed (no user lock, no ledger row). Status guard: a hold no longer held is left alone (already_settled). TB002: no such request.';
comment on function api.record_agent_delivery(uuid, text, integer, integer, integer) is
    'Record streamed delivery progress before a part is handed over (first call sets first_delivered_at); never lowers it. False when the hold is no longer held or its time is up: stop streaming.';
comment on function tokenbill.price_of(integer, integer, integer, integer, integer, integer) is
    'What a call with these sizes costs under these price terms: least(max, per_call + ceil(in_tokens*per_1k_in/1000) + ceil(out_tokens*per_1k_out/1000)), tokens = ceil(chars/4).';
comment on function api.ledger_audit() is
    'Every user whose balance disagrees with the ledger and every hold whose reserve/settle/release rows disagree with it (a settled hold that charged all it reserved may have no settle row). Must return no rows.';
