/*
 * 0031 — password hashes get a role of their own: tokenbill_auth.
 *
 * Until now api.user_credentials(email), which returns the account's Argon2id password hash,
 * was granted to tokenbill_app (0006). Every page, API call and agent request runs as that role
 * (DATABASE_URL, login tokenbill_web), so a leaked DATABASE_URL, or any SQL reachable on the
 * web role, could read every password hash for offline cracking.
 *
 * tokenbill_auth (NOLOGIN) alone is granted EXECUTE on api.user_credentials(text); the app reads
 * credentials through a pool of its own (AUTH_DATABASE_URL, login tokenbill_signin made by
 * `flask --app webapp db-logins`, a NOINHERIT member of tokenbill_auth only), only in the login
 * view and the change-password check, the way Stripe objects are applied only through
 * WEBHOOK_DATABASE_URL (0013). No group role is made a member of tokenbill_auth, and
 * tokenbill_auth is a member of nothing: it cannot SET ROLE to the web, admin, webhook, notifier
 * or sweeper role, and those cannot become it. It reads no table or view.
 *
 * user_credentials is the only function that returns a password hash (register_user and
 * change_password take a new one and return none; api.accounts leaves the column out), so it is
 * the only one moved. Operator commands (create-admin) run as the owner and keep it.
 *
 * Upgrading: run `flask --app webapp migrate`, then `db-logins` again (it makes the new login
 * and prints AUTH_DATABASE_URL), and give that URL to the web app before it restarts: from this
 * migration on, the web login can no longer check a password.
 */

-- ============================================================================================
-- Role (cluster-wide: tolerate a concurrent migration of another database creating it)
-- ============================================================================================
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'tokenbill_auth') then
        create role tokenbill_auth nologin;
    end if;
exception when duplicate_object or unique_violation then
    null;
end
$$;

comment on role tokenbill_auth is
    'Checks passwords: api.user_credentials() and nothing else. The login view and the change-password check (AUTH_DATABASE_URL), never the pages'' role.';

grant usage on schema api to tokenbill_auth;

-- ============================================================================================
-- Password hashes: granted to tokenbill_auth alone, taken from the web role
-- ============================================================================================
revoke execute on function api.user_credentials(text) from tokenbill_app;
grant execute on function api.user_credentials(text) to tokenbill_auth;

comment on function api.user_credentials(text) is
    'What login needs to check a password: the account''s id, Argon2id hash and admin flag. Granted to tokenbill_auth alone (0031; AUTH_DATABASE_URL), never to the web role.';
