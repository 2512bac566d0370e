/*
 * 0035 — every api function refuses bad arguments with the project's own SQLSTATEs.
 *
 * The functions are the contract, called the same way from Flask and from an Edge Function;
 * a caller tells "you sent something wrong" (TB003, TB002 for an unknown id) from "our bug"
 * by the SQLSTATE. A sweep of every api function a group role may execute, with NULLs, empty
 * and oversized text, negative numbers and unknown ids (tests/db/test_api_arguments.py),
 * found four that let PostgreSQL's own errors through instead: 23502 (a NULL into a NOT NULL
 * column), 23514 (a CHECK), 23503 (a foreign key), 2201W (a negative LIMIT). The web app
 * maps those to 500; it validated first, so no page answered one, but an Edge Function or
 * worker calling with the same mistake got "our bug". Each now checks its arguments:
 *
 *   - create_api_key: a name of 1 to 100 characters after trimming (api_keys_name_check), a
 *     prefix and a hash, an existing user (TB002);
 *   - register_user: an e-mail and a password hash; an e-mail the profile rules refuse
 *     (users_email_check, tokenbill.check_user_profile) becomes TB003, the rule still stated
 *     once, in the trigger;
 *   - claim_alert_notifications: a batch of 1 to 1,000;
 *   - record_stripe_event_failure: an event with a string id; a livemode that is not a JSON
 *     boolean is recorded as unknown (NULL) instead of failing the cast.
 */
create or replace function api.create_api_key(p_user_id uuid, p_name text, p_prefix text,
                                              p_key_hash text)
returns uuid
language plpgsql security definer set search_path = '' as $$
declare
    v_id uuid;
begin
    if p_name is null or length(btrim(p_name)) not between 1 and 100 then
        raise exception 'key name must be 1 to 100 characters' using errcode = 'TB003';
    end if;
    if coalesce(length(p_prefix), 0) = 0 or coalesce(length(p_key_hash), 0) = 0 then
        raise exception 'key prefix and hash are required' using errcode = 'TB003';
    end if;
    if not exists (select from tokenbill.users u where u.id = p_user_id) then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    insert into tokenbill.api_keys (user_id, name, prefix, key_hash)
    values (p_user_id, btrim(p_name), p_prefix, p_key_hash)
    returning id into v_id;
    return v_id;
end
$$;

create or replace function api.register_user(p_email text, p_password_hash text)
returns uuid
language plpgsql security definer set search_path = '' as $$
declare
    v_id uuid;
begin
    if coalesce(length(btrim(p_email)), 0) = 0 then
        raise exception 'email is required' using errcode = 'TB003';
    end if;
    if coalesce(length(p_password_hash), 0) = 0 then
        raise exception 'password hash is required' using errcode = 'TB003';
    end if;
    begin
        insert into tokenbill.users (email, password_hash)
        values (lower(btrim(p_email)), p_password_hash)
        on conflict do nothing
        returning id into v_id;
    exception when check_violation then
        raise exception 'email must be an address like name@example.com' using errcode = 'TB003';
    end;
    if v_id is null then
        raise exception 'an account with this email already exists' using errcode = 'TB004';
    end if;
    return v_id;
end
$$;

create or replace function api.claim_alert_notifications(p_limit integer default 20)
returns table (id bigint, user_id uuid, email text, threshold integer, balance integer,
               created_at timestamptz, notify_attempts integer)
language plpgsql security definer set search_path = '' as $$
begin
    if p_limit is null or p_limit not between 1 and 1000 then
        raise exception 'a batch is 1 to 1000 alerts' using errcode = 'TB003';
    end if;
    return query
    with claimed as (
        select a.* from tokenbill.low_balance_alerts a
         where a.notified_at is null
         order by a.id
         limit p_limit
         for update skip locked)
    select c.id, c.user_id, u.email, c.threshold, c.balance, c.created_at, c.notify_attempts
      from claimed c join tokenbill.users u on u.id = c.user_id
     order by c.id;
end
$$;

create or replace function api.record_stripe_event_failure(p_event jsonb, p_error text)
returns void
language plpgsql security definer set search_path = '' as $$
begin
    if jsonb_typeof(p_event -> 'id') is distinct from 'string'
       or length(p_event ->> 'id') = 0 then
        raise exception 'a Stripe event has a string id' using errcode = 'TB003';
    end if;
    insert into tokenbill.stripe_events as e (id, type, livemode, api_version, payload, outcome,
                                              detail)
    values (p_event ->> 'id', coalesce(p_event ->> 'type', 'unknown'),
            case when jsonb_typeof(p_event -> 'livemode') = 'boolean'
                 then (p_event -> 'livemode')::boolean end,
            p_event ->> 'api_version', p_event, 'failed', left(p_error, 2000))
    on conflict (id) do update
        set attempts = e.attempts + 1, detail = excluded.detail
        where e.outcome = 'failed';
end
$$;
