/*
 * 0033 — the history sent to the model reads the conversation's index in its order (0029 fix).
 *
 * 0029 read the newest answered exchanges with `conversation_id = $c and user_id = $u … order
 * by id desc limit n`, meaning a backward scan of exchanges_conversation_idx. Under statistics
 * that think conversations short (most accounts have one of a few exchanges), the planner
 * served it instead by a BitmapAnd of exchanges_pkey (every exchange of the user) and the
 * conversation's index (all of the conversation), then sorted: an agent request continuing a
 * conversation of thousands of exchanges read all of them, before being charged
 * (tests/db/test_conversation_history.py reproduces the tie). Now, as 0030 pages the chat:
 *
 *   - the ids come from exchanges_conversation_idx alone (its own columns: exchanges_pkey
 *     cannot serve them), newest first;
 *   - each exchange is a one-row probe by (conversation, id), in a LATERAL subquery kept from
 *     being flattened (OFFSET 0), where the user, the request being answered and unanswered
 *     exchanges are filtered: the LIMIT stops the scan after p_exchanges kept exchanges;
 *   - enable_bitmapscan off for the function: a bitmap cannot return index order.
 * Same result as 0029: the newest answered exchanges, whole, within the budget, oldest first.
 */
create or replace function api.conversation_history(
    p_user_id uuid, p_conversation_id uuid, p_request_id text, p_exchanges integer,
    p_budget integer)
returns table (role text, content text)
language plpgsql stable security definer
set search_path = '' set enable_bitmapscan = off as $$
begin
    return query
    with recent as (
        select ids.id, e.prompt, e.reply, length(e.prompt) + length(e.reply) as chars
          from (select i.id
                  from tokenbill.exchanges i
                 where i.conversation_id = p_conversation_id
                 order by i.id desc) ids
         cross join lateral (
               select x.prompt, x.reply
                 from tokenbill.exchanges x
                where x.conversation_id = p_conversation_id and x.id = ids.id
                  and x.user_id = p_user_id and x.request_id <> p_request_id
                  and x.reply_status in ('done', 'partial')
               offset 0) e
         order by ids.id desc
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

comment on function api.conversation_history(uuid, uuid, text, integer, integer) is
    'The history sent to the model with a request: the newest answered exchanges of the '
    'conversation (at most p_exchanges, whole, within p_budget characters), oldest first, '
    'as user / assistant turns (0029); read by the conversation''s index in its order, one '
    'exchange at a time, whatever the statistics say (0033).';
