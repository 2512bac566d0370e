/*
 * 0029 — the history sent to the model, newest exchanges first, by the conversation's index.
 *
 * webapp/metering.py built it from api.messages: grouped every message of the conversation by
 * request id, on every agent request that continues a conversation — work proportional to the
 * conversation's length — and a filter on (conversation, user) that the planner can serve
 * from either index. With one row per exchange (0023) the newest answered exchanges are a
 * backward scan of exchanges_conversation_idx with a LIMIT: at most p_exchanges rows read
 * (plus unanswered ones skipped), whatever the conversation's length.
 */
create function api.conversation_history(
    p_user_id uuid, p_conversation_id uuid, p_request_id text, p_exchanges integer,
    p_budget integer)
returns table (role text, content text)
language plpgsql stable security definer set search_path = '' as $$
begin
    return query
    with recent as (
        select e.id, e.prompt, e.reply, length(e.prompt) + length(e.reply) as chars
          from tokenbill.exchanges e
         where e.conversation_id = p_conversation_id and e.user_id = p_user_id
           and e.request_id <> p_request_id and e.reply_status in ('done', 'partial')
         order by e.id desc
         limit greatest(p_exchanges, 0)),
    kept as (
        select r.id, r.prompt, r.reply, sum(r.chars) over (order by r.id desc) as running
          from recent r)
    select t.role, t.content
      from kept k
     cross join lateral (values (0, 'user', k.prompt), (1, 'assistant', k.reply))
           t (n, role, content)
     where k.running <= p_budget
     order by k.id, t.n;
end
$$;

revoke all on function api.conversation_history(uuid, uuid, text, integer, integer) from public;
grant execute on function api.conversation_history(uuid, uuid, text, integer, integer) to tokenbill_app;

comment on function api.conversation_history(uuid, uuid, text, integer, integer) is
    'The history sent to the model with a request: the newest answered exchanges of the '
    'conversation (at most p_exchanges, whole, within p_budget characters), oldest first, '
    'as user / assistant turns (0029).';
