/*
 * 0002 — accounts, API keys and token packages.
 */

-- ============================================================================================
-- Users
-- ============================================================================================
create table tokenbill.users (
    id             uuid primary key default gen_random_uuid(),
    email          text not null check (email = lower(btrim(email)) and email like '_%@_%'),
    password_hash  text not null,
    is_admin       boolean not null default false,
    balance        integer not null default 0,
    created_at     timestamptz not null default now()
);
create unique index users_email_key on tokenbill.users (lower(email));

comment on table tokenbill.users is 'Accounts. balance is maintained only by tokenbill.post_entry and always equals the sum of the user''s ledger deltas.';
comment on column tokenbill.users.email is 'Stored lower-cased; unique case-insensitively.';
comment on column tokenbill.users.balance is 'Tokens available. May be negative only after a refund/dispute clawback.';

-- ============================================================================================
-- API keys (for programmatic agent access)
-- ============================================================================================
create table tokenbill.api_keys (
    id            uuid primary key default gen_random_uuid(),
    user_id       uuid not null references tokenbill.users (id) on delete cascade,
    name          text not null check (length(btrim(name)) between 1 and 100),
    prefix        text not null,
    key_hash      text not null unique,
    created_at    timestamptz not null default now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
create index api_keys_user_idx on tokenbill.api_keys (user_id, created_at desc);

comment on table tokenbill.api_keys is 'Bearer keys. Only a SHA-256 of the secret is stored; the secret is shown once.';

-- ============================================================================================
-- Token packages
-- ============================================================================================
create table tokenbill.packages (
    code             text primary key check (code ~ '^[a-z0-9_]{1,40}$'),
    name             text not null,
    tokens           integer not null check (tokens > 0),
    amount_cents     integer not null check (amount_cents > 0),
    currency         text not null check (currency ~ '^[a-z]{3}$'),
    stripe_price_id  text,
    active           boolean not null default true,
    sort_order       integer not null default 0,
    created_at       timestamptz not null default now()
);

comment on table tokenbill.packages is
    'What a payment buys. The only source of truth for tokens and price; a package''s terms never change (make a new code instead).';

insert into tokenbill.packages (code, name, tokens, amount_cents, currency, sort_order) values
    ('tokens_100', 'Starter — 100 tokens', 100, 500, 'usd', 1),
    ('tokens_250', 'Standard — 250 tokens', 250, 1000, 'usd', 2),
    ('tokens_600', 'Pro — 600 tokens', 600, 2000, 'usd', 3);

/** Refuse to change what a package sells: payments in flight were quoted these terms. */
create function tokenbill.forbid_package_terms_change() returns trigger
language plpgsql set search_path = '' as $$
begin
    if tg_op = 'DELETE' then
        raise exception 'package % cannot be deleted; set active = false', old.code
            using errcode = 'TB001';
    end if;
    if (new.code, new.tokens, new.amount_cents, new.currency)
       is distinct from (old.code, old.tokens, old.amount_cents, old.currency) then
        raise exception 'package % terms are immutable; create a new package', old.code
            using errcode = 'TB001';
    end if;
    return new;
end
$$;

create trigger packages_terms_immutable
    before update or delete on tokenbill.packages
    for each row execute function tokenbill.forbid_package_terms_change();
