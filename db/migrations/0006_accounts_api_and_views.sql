/*
 * 0006 — account functions and the read-only views the app selects from.
 *
 * Views are owned by the migration owner, so tokenbill_app reads through them without any
 * privilege on the tables; password hashes are reachable only through api.user_credentials.
 */

-- ============================================================================================
-- Accounts
-- ============================================================================================
/** Create an account; TB004 when the email (case-insensitively) is taken. */
create function api.register_user(p_email text, p_password_hash text)
returns uuid
language plpgsql security definer set search_path = '' as $$
declare
    v_id uuid;
begin
    insert into tokenbill.users (email, password_hash)
    values (lower(btrim(p_email)), p_password_hash)
    on conflict do nothing
    returning id into v_id;
    if v_id is null then
        raise exception 'an account with this email already exists' using errcode = 'TB004';
    end if;
    return v_id;
end
$$;

revoke all on function api.register_user(text, text) from public;
grant execute on function api.register_user(text, text) to tokenbill_app;

/** What login needs to check a password. */
create function api.user_credentials(p_email text)
returns table (id uuid, password_hash text, is_admin boolean)
language sql stable security definer set search_path = '' as $$
    select u.id, u.password_hash, u.is_admin from tokenbill.users u
     where lower(u.email) = lower(btrim(p_email));
$$;

revoke all on function api.user_credentials(text) from public;
grant execute on function api.user_credentials(text) to tokenbill_app;

/** Make an account an admin (or not). Deliberately NOT granted to tokenbill_app: operators only. */
create function api.set_admin(p_email text, p_is_admin boolean default true)
returns uuid
language plpgsql security definer set search_path = '' as $$
declare
    v_id uuid;
begin
    update tokenbill.users set is_admin = p_is_admin where lower(email) = lower(btrim(p_email))
    returning id into v_id;
    if v_id is null then
        raise exception 'no account with email %', p_email using errcode = 'TB002';
    end if;
    return v_id;
end
$$;

revoke all on function api.set_admin(text, boolean) from public;

-- ============================================================================================
-- API keys
-- ============================================================================================
/** Store a new key's hash (the secret itself never reaches the database). */
create function api.create_api_key(p_user_id uuid, p_name text, p_prefix text, p_key_hash text)
returns uuid
language sql security definer set search_path = '' as $$
    insert into tokenbill.api_keys (user_id, name, prefix, key_hash)
    values (p_user_id, btrim(p_name), p_prefix, p_key_hash)
    returning id;
$$;

revoke all on function api.create_api_key(uuid, text, text, text) from public;
grant execute on function api.create_api_key(uuid, text, text, text) to tokenbill_app;

/** Revoke one of the user's own keys; false when it is not theirs or already revoked. */
create function api.revoke_api_key(p_user_id uuid, p_key_id uuid)
returns boolean
language sql security definer set search_path = '' as $$
    with revoked as (
        update tokenbill.api_keys set revoked_at = now()
         where id = p_key_id and user_id = p_user_id and revoked_at is null
        returning 1)
    select exists (select from revoked);
$$;

revoke all on function api.revoke_api_key(uuid, uuid) from public;
grant execute on function api.revoke_api_key(uuid, uuid) to tokenbill_app;

/** The user a live key belongs to (NULL if unknown or revoked); notes when it was last used. */
create function api.user_for_api_key(p_key_hash text)
returns uuid
language sql security definer set search_path = '' as $$
    update tokenbill.api_keys set last_used_at = now()
     where key_hash = p_key_hash and revoked_at is null
    returning user_id;
$$;

revoke all on function api.user_for_api_key(text) from public;
grant execute on function api.user_for_api_key(text) to tokenbill_app;

-- ============================================================================================
-- Read-only views
-- ============================================================================================
create view api.accounts as
    select id, email, is_admin, balance, created_at from tokenbill.users;
comment on view api.accounts is 'Accounts without password hashes.';

create view api.packages as
    select code, name, tokens, amount_cents, currency, stripe_price_id, active, sort_order
      from tokenbill.packages;

create view api.ledger_entries as
    select id, user_id, kind::text as kind, delta, balance_after, request_id, payment_id,
           checkout_session_id, payment_intent_id, charge_id, dispute_id, stripe_event_id,
           reason, actor_id, created_at
      from tokenbill.ledger;

create view api.purchases as
    select p.id, p.user_id, p.payment_intent_id, p.checkout_session_id, p.package_code,
           p.amount_cents, p.currency, p.tokens_granted, p.tokens_clawed, p.refunded_cents,
           p.charge_id, p.receipt_url, p.status, p.reason, p.granted_at, p.created_at, p.updated_at,
           case
               when p.status <> 'granted' then p.status
               when exists (select from tokenbill.disputes d
                             where d.payment_id = p.id and d.status not in ('won', 'warning_closed'))
                   then 'disputed'
               when p.refunded_cents >= p.amount_cents then 'refunded'
               when p.refunded_cents > 0 then 'partially_refunded'
               else 'paid'
           end as display_status
      from tokenbill.payments p;
comment on view api.purchases is 'Payments with a status a person reads: paid, refunded, partially_refunded, disputed, rejected, failed, pending.';

create view api.checkout_sessions as
    select id, user_id, package_code, amount_cents, currency, tokens, status, payment_status,
           payment_intent_id, created_at, updated_at
      from tokenbill.checkout_sessions;

create view api.stripe_events as
    select id, type, livemode, api_version, payload, received_at, processed_at, outcome, detail, attempts
      from tokenbill.stripe_events;

create view api.disputes as
    select id, payment_id, amount_cents, status, reason, created_at, updated_at from tokenbill.disputes;

create view api.api_keys as
    select id, user_id, name, prefix, created_at, last_used_at, revoked_at from tokenbill.api_keys;

grant select on api.accounts, api.packages, api.ledger_entries, api.purchases,
    api.checkout_sessions, api.stripe_events, api.disputes, api.api_keys to tokenbill_app;
