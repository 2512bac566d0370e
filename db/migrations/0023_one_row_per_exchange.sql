/*
 * 0023 — one row per agent exchange (issue 16: the agent request's database work).
 *
 * Until now one agent request wrote eight rows: the user's row locked, then updated, a ledger
 * 'reserve' row, a hold row, two message rows (the prompt and a pending reply), and at settle
 * the hold and the reply message updated again — each update a new row version with new
 * index entries. The seed writes four. tokenbill.exchanges holds one request whole: the
 * prompt, the reply and the hold (the metering state) in one row, so a request now writes
 *
 *   begin:  the user's balance (one conditional UPDATE, no separate lock), the ledger
 *           'reserve' row, the exchange row, the conversation touched — one statement;
 *   settle: the exchange row updated once (charged in full: nothing else).
 *
 * Same signatures, same answers, same guarantees (workshop/bench_pgbench.py measures it;
 * docs/performance.md has the numbers):
 *
 *   - Idempotency without the per-user lock: a twin request (same request id) that commits
 *     first makes this one's INSERT ... ON CONFLICT DO NOTHING insert nothing; then nothing of
 *     this request is written (the ledger row and the conversation hang off the exchange's
 *     INSERT in the same statement), the balance moved by this statement is given back in
 *     the same transaction, and the first request's outcome is replayed (or 'mismatch').
 *   - No overdraft: the balance moves only in the conditional UPDATE (balance >= price).
 *   - begin_agent_request tries the reservation first, in one statement (the price and the
 *     conversation's owner inside it); only when nothing was reserved does it look why —
 *     the user unknown, the conversation not theirs, no price, the request id seen before
 *     (replay / mismatch), or tokens short — and then a user's overdue holds are closed
 *     first (under the user's lock, as every money-moving path takes it) and the
 *     reservation tried once more. So a user's overdue holds are closed when they matter:
 *     when the balance is short, when that request is retried, and by the sweep (every
 *     minute, the workers) — no longer on every request. Lock order everywhere: user, then
 *     exchange (the full-price settle takes the exchange alone).
 *   - The reserve row's low-balance and auto top-up check is post_entry's, inline (as
 *     api.consume does since 0020): debit_crossed runs only when a threshold is crossed.
 *   - tokenbill.messages and tokenbill.agent_holds are gone; api.messages (two rows per
 *     exchange: 'user' and 'assistant', ids 2n and 2n+1 so they sort as before) and
 *     api.agent_holds keep their columns, over tokenbill.exchanges. Requests from before 0014
 *     (no hold) keep their messages; their hold columns are NULL and api.agent_holds skips them.
 *   - api.ledger_audit checks every exchange that has a hold, as it checked every hold.
 *   - The conversation's owner is read by the conversation's key alone ((select user_id ...
 *     where id = $conversation) = $user): as `exists (... where id = $c and user_id = $u)` the
 *     generic plan scanned conversations_user_idx on user_id and filtered on id — every one
 *     of the user's conversations, on every request (and, under one hot account, in every
 *     waiter's EvalPlanQual, which computes InitPlans the request itself skips).
 *   - The exchange's key is (user, request id): its primary key and only unique index. `id`
 *     (identity) keeps the order requests began in, unindexed: a settle changes the open-hold
 *     index's predicate, so it is never HOT and writes every index again — one index fewer is
 *     two index writes fewer per request. tokenbill.expire_hold takes the key.
 */

-- ============================================================================================
-- The table
-- ============================================================================================
/**
 * Every rule of an exchange row in one function (one CHECK, see 0021): the prompt's request
 * id, the reply's status, and — when the request was metered (hold_status not null) — the
 * hold's rules as tokenbill.agent_hold_is_valid had them. False, never NULL, for a broken row.
 */
create function tokenbill.exchange_is_valid(
    p_request_id text, p_reply_status text, p_cost integer, p_request_hash text,
    p_reserved integer, p_hold_status text, p_input_chars integer, p_delivered_parts integer,
    p_delivered_chars integer, p_settled_at timestamptz, p_charged integer
) returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    return coalesce(
        length(p_request_id) between 1 and 200
        and p_cost > 0
        and p_reply_status in ('pending', 'done', 'partial', 'failed', 'timeout')
        and p_input_chars >= 0 and p_delivered_parts >= 0 and p_delivered_chars >= 0
        and case when p_hold_status is null then
                      p_reserved is null and p_charged is null and p_reply_status <> 'pending'
                 else length(p_request_hash) between 1 and 200
                      and p_reserved > 0
                      and case p_hold_status
                              when 'held' then p_settled_at is null and p_charged is null
                                               and p_reply_status = 'pending'
                              when 'settled' then p_settled_at is not null
                                                  and p_charged between 0 and p_reserved
                              when 'released' then p_settled_at is not null and p_charged = 0
                              else false
                          end
            end,
        false);
end
$$;

create table tokenbill.exchanges (
    id                 bigint generated always as identity,  -- the order requests began in
    conversation_id    uuid not null,
    user_id            uuid not null,
    request_id         text not null,
    prompt             text not null,
    reply              text not null default '',
    reply_status       text not null default 'pending',
    error              text,
    cost               integer not null,
    created_at         timestamptz not null default now(),
    completed_at       timestamptz,
    -- the hold (null for requests from before 0014, which had none)
    request_hash       text,
    agent              text,
    per_call           integer,
    per_1k_input       integer,
    per_1k_output      integer,
    reserved           integer,
    hold_status        text,
    input_chars        integer not null default 0,
    delivered_parts    integer not null default 0,
    delivered_chars    integer not null default 0,
    first_delivered_at timestamptz,
    progress_at        timestamptz,
    expires_at         timestamptz,
    settled_at         timestamptz,
    charged            integer,
    outcome            text,
    constraint exchanges_pkey primary key (user_id, request_id),
    constraint exchanges_valid check (tokenbill.exchange_is_valid(
        request_id, reply_status, cost, request_hash, reserved, hold_status, input_chars,
        delivered_parts, delivered_chars, settled_at, charged))
);
create index exchanges_conversation_idx on tokenbill.exchanges (conversation_id, id);
create index exchanges_open_idx on tokenbill.exchanges (user_id, expires_at)
    where hold_status = 'held';

-- Every request so far, in the order it began: the prompt (role 'user'), the reply (role
-- 'assistant') and its hold, if any, joined on (user, request id).
insert into tokenbill.exchanges (
    conversation_id, user_id, request_id, prompt, reply, reply_status, error, cost, created_at,
    completed_at, request_hash, agent, per_call, per_1k_input, per_1k_output, reserved,
    hold_status, input_chars, delivered_parts, delivered_chars, first_delivered_at,
    progress_at, expires_at, settled_at, charged, outcome)
select coalesce(q.conversation_id, a.conversation_id), coalesce(q.user_id, a.user_id),
       coalesce(q.request_id, a.request_id), coalesce(q.content, ''), coalesce(a.content, ''),
       coalesce(a.status, 'failed'), a.error, coalesce(q.cost, a.cost),
       coalesce(q.created_at, a.created_at), a.completed_at, h.request_hash, h.agent,
       h.per_call, h.per_1k_input, h.per_1k_output, h.reserved, h.status,
       coalesce(h.input_chars, 0), coalesce(h.delivered_parts, 0),
       coalesce(h.delivered_chars, 0), h.first_delivered_at, h.progress_at, h.expires_at,
       h.settled_at, h.charged, h.outcome
  from (select * from tokenbill.messages where role = 'user') q
  full join (select * from tokenbill.messages where role = 'assistant') a
    on a.user_id = q.user_id and a.request_id = q.request_id
  left join tokenbill.agent_holds h
    on h.user_id = coalesce(q.user_id, a.user_id)
   and h.request_id = coalesce(q.request_id, a.request_id)
 order by least(q.id, a.id);

-- ============================================================================================
-- The views keep their columns
-- ============================================================================================
drop view api.messages;
drop view api.agent_holds;

create view api.messages as
select e.id * 2 + r.n as id, e.conversation_id, e.user_id, e.request_id, r.role,
       case r.n when 0 then e.prompt else e.reply end as content,
       case r.n when 0 then 'done' else e.reply_status end as status,
       case r.n when 1 then e.error end as error,
       e.cost, e.created_at,
       case r.n when 1 then e.completed_at end as completed_at,
       case r.n when 1 then e.charged end as charged
  from tokenbill.exchanges e
 cross join (values (0, 'user'), (1, 'assistant')) r (n, role);

create view api.agent_holds as
select e.id, e.user_id, e.request_id, e.agent, e.reserved, e.hold_status as status,
       e.input_chars, e.delivered_parts, e.delivered_chars, e.first_delivered_at, e.progress_at,
       e.created_at, e.expires_at, e.settled_at, e.charged, e.outcome
  from tokenbill.exchanges e
 where e.hold_status is not null;

grant select on api.messages, api.agent_holds to tokenbill_app, tokenbill_admin;

-- ============================================================================================
-- The functions, over exchanges
-- ============================================================================================
drop function tokenbill.close_hold(tokenbill.agent_holds, boolean, integer, integer, text, integer);

/**
 * Close an open exchange's hold and write its reply: charge what was delivered (the price of
 * the sizes, at most what was reserved; nothing if nothing was delivered) and give the rest
 * back through post_entry. The caller holds the user's lock, then the exchange's.
 */
create function tokenbill.close_hold(
    p_exchange tokenbill.exchanges, p_delivered boolean, p_output_chars integer,
    p_input_chars integer, p_outcome text, p_parts integer, p_reply text, p_reply_status text,
    p_error text
) returns integer
language plpgsql set search_path = '' as $$
declare
    v_charged integer := 0;
    v_input integer := greatest(coalesce(p_input_chars, 0), p_exchange.input_chars);
    v_output integer := greatest(coalesce(p_output_chars, 0), p_exchange.delivered_chars);
begin
    if p_delivered then
        v_charged := tokenbill.price_of(p_exchange.per_call, p_exchange.per_1k_input,
                                        p_exchange.per_1k_output, p_exchange.reserved, v_input,
                                        v_output);
        if v_charged < p_exchange.reserved then  -- charged all it reserved: nothing to give back
            perform tokenbill.post_entry(
                p_exchange.user_id, 'settle', p_exchange.reserved - v_charged,
                p_allow_negative => true, p_request_id => p_exchange.request_id,
                p_reason => format('%s: charged %s of %s reserved', p_outcome, v_charged,
                                   p_exchange.reserved));
        end if;
    else
        perform tokenbill.post_entry(
            p_exchange.user_id, 'release', p_exchange.reserved, p_allow_negative => true,
            p_request_id => p_exchange.request_id,
            p_reason => format('%s: nothing delivered, %s reserved returned', p_outcome,
                               p_exchange.reserved));
    end if;
    update tokenbill.exchanges e
       set hold_status = case when p_delivered then 'settled' else 'released' end,
           charged = v_charged, settled_at = now(), outcome = p_outcome,
           input_chars = v_input, delivered_chars = v_output,
           delivered_parts = greatest(e.delivered_parts, coalesce(p_parts, 0)),
           reply = p_reply, reply_status = p_reply_status, error = p_error,
           completed_at = now()
     where e.user_id = p_exchange.user_id and e.request_id = p_exchange.request_id;
    return v_charged;
end
$$;

drop function tokenbill.expire_hold(bigint);

/** Expire one overdue open exchange (the caller holds its user's lock); false if not one. */
create function tokenbill.expire_hold(p_user_id uuid, p_request_id text)
returns boolean
language plpgsql set search_path = '' as $$
declare
    v_exchange tokenbill.exchanges;
    v_delivered boolean;
begin
    select * into v_exchange from tokenbill.exchanges e
     where e.user_id = p_user_id and e.request_id = p_request_id and e.hold_status = 'held'
       and e.expires_at <= now()
       for update;
    if not found then
        return false;
    end if;
    v_delivered := v_exchange.first_delivered_at is not null;
    perform tokenbill.close_hold(
        v_exchange, v_delivered, v_exchange.delivered_chars, v_exchange.input_chars, 'expired',
        null, v_exchange.reply, case when v_delivered then 'partial' else 'timeout' end,
        format('expired: the worker stopped after delivering %s part(s)',
               v_exchange.delivered_parts));
    return true;
end
$$;

create or replace function api.expire_agent_holds()
returns integer
language plpgsql security definer set search_path = '' as $$
declare
    v_row record;
    v_count integer := 0;
begin
    for v_row in
        select e.user_id, e.request_id from tokenbill.exchanges e
         where e.hold_status = 'held' and e.expires_at <= now()
         order by e.id
    loop
        perform tokenbill.lock_user(v_row.user_id);
        if tokenbill.expire_hold(v_row.user_id, v_row.request_id) then
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end
$$;

create or replace function api.record_agent_delivery(
    p_user_id uuid, p_request_id text, p_parts integer, p_chars integer, p_input_chars integer)
returns boolean
language plpgsql security definer set search_path = '' as $$
begin
    update tokenbill.exchanges e
       set delivered_parts = greatest(e.delivered_parts, coalesce(p_parts, 0)),
           delivered_chars = greatest(e.delivered_chars, coalesce(p_chars, 0)),
           input_chars = greatest(e.input_chars, coalesce(p_input_chars, 0)),
           first_delivered_at = coalesce(e.first_delivered_at, now()),
           progress_at = now()
     where e.user_id = p_user_id and e.request_id = p_request_id and e.hold_status = 'held'
       and e.expires_at > now();
    return found;
end
$$;

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

    -- charged all it reserved (the common case): the exchange alone, one UPDATE
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
    returning e.reserved, e.reply_status,
              (select u.balance from tokenbill.users u where u.id = p_user_id)
         into charged, message_status, balance;
    if found then
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
                            h.id, h.hold_status, h.reserved, h.charged, coalesce(m.reserves, 0),
                            coalesce(m.closes, 0), coalesce(m.net, 0)) end
      from (select e.id, e.user_id, e.request_id, e.hold_status, e.reserved, e.charged
              from tokenbill.exchanges e
             where e.hold_status is not null) h
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
               when h.hold_status = 'held' then 0
               -- charged all it reserved: no settle row since 0021 (a 0-delta one before)
               when h.hold_status = 'settled' and h.charged = h.reserved
                    then least(coalesce(m.closes, 0), 1)
               else 1 end
        or coalesce(m.net, 0) <> case when h.hold_status = 'held' then -h.reserved
                                      else -h.charged end;
$$;

-- ============================================================================================
-- The old tables go (every row is in exchanges now)
-- ============================================================================================
drop table tokenbill.agent_holds;
drop table tokenbill.messages;
drop function tokenbill.agent_hold_is_valid(text, text, integer, text, integer, integer, integer,
                                            timestamptz, integer);
drop function tokenbill.message_is_valid(text, text, text, integer);

revoke all on function tokenbill.exchange_is_valid(text, text, integer, text, integer, text,
                                                   integer, integer, integer, timestamptz,
                                                   integer) from public;
revoke all on function tokenbill.expire_hold(uuid, text) from public;
revoke all on function tokenbill.close_hold(tokenbill.exchanges, boolean, integer, integer, text,
                                            integer, text, text, text) from public;

-- ============================================================================================
-- Comments
-- ============================================================================================
comment on table tokenbill.exchanges is
    'One agent request whole: the prompt, the reply and the hold that meters it (one row per '
    'request since 0023; api.messages shows it as two messages, api.agent_holds as its hold).';
comment on column tokenbill.exchanges.conversation_id is
    'The conversation (no foreign key since 0021: conversations are never deleted, '
    'tokenbill.forbid_history_delete).';
comment on column tokenbill.exchanges.user_id is
    'The user (no foreign key: users are never deleted, tokenbill.forbid_history_delete).';
comment on column tokenbill.exchanges.request_id is
    'The client''s idempotency key: one exchange per (user, request id).';
comment on column tokenbill.exchanges.prompt is 'The user''s message.';
comment on column tokenbill.exchanges.reply is
    'The agent''s reply, written when the request settles ('''' until then).';
comment on column tokenbill.exchanges.reply_status is
    'The reply''s outcome: pending, done, partial, failed or timeout.';
comment on column tokenbill.exchanges.error is 'Why the reply is not done (null when done).';
comment on column tokenbill.exchanges.cost is
    'The price shown with the request: what was reserved (the consumed cost before 0014).';
comment on column tokenbill.exchanges.created_at is 'When the request began.';
comment on column tokenbill.exchanges.completed_at is 'When the reply was settled.';
comment on column tokenbill.exchanges.request_hash is
    'Hash of the request body: a reused request id with another body is a mismatch.';
comment on column tokenbill.exchanges.agent is 'The agent priced (its tokenbill.prices row).';
comment on column tokenbill.exchanges.per_call is 'The price per call, copied at begin.';
comment on column tokenbill.exchanges.per_1k_input is
    'The price per 1,000 input characters, copied at begin.';
comment on column tokenbill.exchanges.per_1k_output is
    'The price per 1,000 output characters, copied at begin.';
comment on column tokenbill.exchanges.reserved is
    'Tokens reserved at begin (the most the request can cost); null before 0014.';
comment on column tokenbill.exchanges.hold_status is
    'held (open), settled (charged) or released (nothing delivered, all returned); null for '
    'requests from before 0014.';
comment on column tokenbill.exchanges.input_chars is 'Input characters billed.';
comment on column tokenbill.exchanges.delivered_parts is
    'Stream parts delivered to the client so far.';
comment on column tokenbill.exchanges.delivered_chars is
    'Output characters delivered to the client so far.';
comment on column tokenbill.exchanges.first_delivered_at is
    'When the first part reached the client (a hold that delivered something is charged).';
comment on column tokenbill.exchanges.progress_at is 'The last delivery recorded.';
comment on column tokenbill.exchanges.expires_at is
    'When an open hold is closed by the sweep (the worker is presumed dead).';
comment on column tokenbill.exchanges.settled_at is 'When the hold was closed.';
comment on column tokenbill.exchanges.charged is 'Tokens charged in the end (null while held).';
comment on column tokenbill.exchanges.outcome is
    'How the hold closed: done, <outcome> (partial), failed, timeout, disconnected, expired.';
comment on column tokenbill.exchanges.id is
    'The order requests began in (api.messages'' ids are 2 id and 2 id + 1); not a key: '
    'an exchange is found by (user, request id).';
comment on constraint exchanges_pkey on tokenbill.exchanges is
    'One exchange per (user, request id): the idempotency key of the agent request (the only '
    'unique index: every begin writes it, and a settle that is not HOT writes every index).';
comment on function tokenbill.expire_hold(uuid, text) is
    'Expire one overdue open exchange by its key (the caller holds the user''s lock): charge '
    'what it delivered, release the rest; false when it is not open and overdue.';
comment on constraint exchanges_valid on tokenbill.exchanges is
    'Every rule of an exchange row, in tokenbill.exchange_is_valid.';
comment on index tokenbill.exchanges_conversation_idx is
    'A conversation''s exchanges in order (the chat page, the history sent to the model).';
comment on index tokenbill.exchanges_open_idx is
    'Open holds by user and expiry: the overdue check at begin and the expiry sweep.';
comment on function tokenbill.exchange_is_valid(text, text, integer, text, integer, text,
                                                integer, integer, integer, timestamptz, integer) is
    'Every rule of an exchange row (its one CHECK); false, never null, for a broken row.';
comment on function tokenbill.close_hold(tokenbill.exchanges, boolean, integer, integer, text,
                                         integer, text, text, text) is
    'Close an open exchange: charge what was delivered, give the rest back, write the reply.';
comment on view api.messages is
    'Chat messages, two per exchange (user: the prompt, assistant: the reply and its outcome); '
    'charged is what the request cost (null while running).';
comment on view api.agent_holds is
    'The hold of every metered agent request (requests from before 0014 had none).';
