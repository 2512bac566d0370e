/*
 * 0030 — one page of a conversation for the chat page and the JSON API, newest page first.
 *
 * webapp/agent.py read every message of the conversation from api.messages (no limit): an API
 * client with a conversation of thousands of exchanges made every page view and JSON read load
 * and render all of them. And `conversation_id = $c and user_id = $u` can be served from
 * either index: under tied statistics (one conversation per user, as far as the planner
 * knows) it read the user's every entry of exchanges_pkey (a BitmapAnd), or the whole
 * conversation through a bitmap of exchanges_conversation_idx and sorted it.
 *
 * A page is keyset-paged by exchange id (p_before: the oldest exchange of the page shown, as
 * webapp/history.py pages the ledger) and always read the same way:
 *
 *   - the page's ids: a backward scan of exchanges_conversation_idx with a LIMIT, on the
 *     index's columns alone (no user_id: exchanges_pkey cannot serve it) — at most
 *     p_limit + 1 entries, the last only to tell whether an earlier page exists;
 *   - each exchange by (conversation, id) in a LATERAL subquery kept from being flattened
 *     (OFFSET 0): a nested loop of one-row probes, never a hash join over the conversation;
 *     user_id filters there, so someone else's conversation returns nothing;
 *   - enable_bitmapscan off for the function: a bitmap cannot return index order, so with
 *     statistics that think the conversation small it read all of it and sorted (the first,
 *     custom plans did; tests/db/test_conversation_page.py).
 */
create function api.conversation_page(
    p_user_id uuid, p_conversation_id uuid, p_before bigint, p_limit integer)
returns table (role text, content text, status text, request_id text, charged integer,
               created_at timestamptz, earlier bigint)
language plpgsql stable security definer
set search_path = '' set enable_bitmapscan = off as $$
declare
    v_limit integer := least(greatest(coalesce(p_limit, 0), 0), 100);  -- exchanges, capped
begin
    return query
    with ids as (
        select x.id, row_number() over (order by x.id desc) as n, count(*) over () as total
          from (select i.id
                  from tokenbill.exchanges i
                 where i.conversation_id = p_conversation_id
                   and i.id < coalesce(p_before, 9223372036854775807)
                 order by i.id desc
                 limit v_limit + 1) x)
    select t.role, t.content, t.status, e.request_id, t.charged, e.created_at,
           case when k.total > v_limit then min(k.id) over () end
      from ids k
     cross join lateral (
           select ex.id, ex.request_id, ex.prompt, ex.reply, ex.reply_status, ex.charged,
                  ex.created_at
             from tokenbill.exchanges ex
            where ex.conversation_id = p_conversation_id and ex.id = k.id
              and ex.user_id = p_user_id
           offset 0) e
     cross join lateral (values (0, 'user', e.prompt, 'done', null::integer),
                                (1, 'assistant', e.reply, e.reply_status, e.charged))
           t (n, role, content, status, charged)
     where k.n <= v_limit
     order by e.id, t.n;
end
$$;

revoke all on function api.conversation_page(uuid, uuid, bigint, integer) from public;
grant execute on function api.conversation_page(uuid, uuid, bigint, integer) to tokenbill_app;

comment on function api.conversation_page(uuid, uuid, bigint, integer) is
    'One page of the owner''s conversation (the chat page, GET /api/conversations/<id>): the '
    'newest p_limit exchanges (at most 100) older than exchange p_before (null: the newest), '
    'oldest first, as user / assistant messages; earlier is the p_before of the page before '
    'it (null when none). Someone else''s conversation returns nothing (0030).';
