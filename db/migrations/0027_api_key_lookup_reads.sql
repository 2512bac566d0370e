/*
 * 0027 — an API key's lookup is a read (issue 16: the agent request over HTTP).
 *
 * api.user_for_api_key updated last_used_at on every call, so every request authenticated by
 * a key paid a row update and a durable commit (a WAL flush: 0.05–0.5 ms here, more under
 * load) before any work; and as a SQL function with SET it was never inlined, so that UPDATE
 * was planned again on every call. Now it is plpgsql (plans cached per session) and records a
 * use at most once a minute: the key page's "last used" is exact to the minute, and a request
 * within the minute of the last recorded use writes nothing.
 *
 * Revocation is unchanged: the lookup reads revoked_at in the statement's snapshot, so a key
 * is refused from the moment its revoke commits (tests/db/test_api_key_lookup.py).
 */
create or replace function api.user_for_api_key(p_key_hash text)
returns uuid
language plpgsql security definer set search_path = '' as $$
declare
    v_user uuid;
    v_last_used timestamptz;
begin
    select k.user_id, k.last_used_at into v_user, v_last_used
      from tokenbill.api_keys k
     where k.key_hash = p_key_hash and k.revoked_at is null;
    if v_user is not null
       and (v_last_used is null or v_last_used < now() - interval '1 minute') then
        update tokenbill.api_keys k set last_used_at = now()
         where k.key_hash = p_key_hash and k.revoked_at is null;
    end if;
    return v_user;
end
$$;

comment on function api.user_for_api_key(text) is
    'The user of a live API key (by its SHA-256), or null; records the use at most once a '
    'minute, so a lookup is a read (0027).';
