/*
 * 0019 — one Stripe Customer per account, and auto top-up with a monthly cap.
 *
 * Customers: tokenbill.stripe_customers maps a user to the one Customer the app created for
 * them (idempotency key derived from the user id). The first recorded id wins; a Customer id
 * already recorded for someone else is refused, so one card never pays for two accounts.
 *
 * Auto top-up: a trigger on the ledger queues a row in tokenbill.auto_topups when a
 * consumption or reservation takes the balance from at or above the user's auto top-up
 * threshold to below it — once per crossing (the row's ledger_id is unique), like the
 * low-balance alert. The row is an outbox: `flask --app webapp auto-topup` claims it
 * (api.claim_auto_topup, FOR UPDATE SKIP LOCKED), creates the off-session PaymentIntent with
 * the row's idempotency key and records the outcome (api.finish_auto_topup). Tokens are never
 * granted here: the PaymentIntent carries tokenbill's metadata, so payment_intent.succeeded
 * grants through api.grant_for_payment like any purchase (and refunds/disputes claw back). A
 * trigger on tokenbill.payments follows the payment into the top-up row.
 *
 * The monthly cap is checked in the same trigger, under a lock on the user's settings row:
 * no row is queued when pending + succeeded top-ups of the calendar month (UTC) plus this one
 * would exceed it. Three failed top-ups in a row turn auto top-up off, with the reason kept
 * for the user.
 */

-- ============================================================================================
-- One Stripe Customer per account
-- ============================================================================================
create table tokenbill.stripe_customers (
    user_id      uuid primary key references tokenbill.users (id),
    customer_id  text not null unique check (customer_id ~ '^cus_[A-Za-z0-9_]{1,250}$'),
    created_at   timestamptz not null default now()
);
comment on table tokenbill.stripe_customers is 'The one Stripe Customer of each account (receipts, saved cards and invoices belong together).';

/**
 * Record the Stripe Customer the app created for a user and return the one on record: the
 * first recorded id wins (a retried creation returns the same Customer anyway). A Customer
 * id recorded for another user is refused (TB004).
 */
create function api.record_stripe_customer(p_user_id uuid, p_customer_id text)
returns text
language plpgsql security definer set search_path = '' as $$
declare
    v_id text;
begin
    if p_customer_id is null or p_customer_id !~ '^cus_[A-Za-z0-9_]{1,250}$' then
        raise exception 'malformed Stripe customer id %', p_customer_id using errcode = 'TB003';
    end if;
    perform from tokenbill.users where id = p_user_id;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    select c.user_id into v_id from tokenbill.stripe_customers c
     where c.customer_id = p_customer_id and c.user_id <> p_user_id;
    if found then
        raise exception 'customer % belongs to another account', p_customer_id using errcode = 'TB004';
    end if;
    insert into tokenbill.stripe_customers (user_id, customer_id)
    values (p_user_id, p_customer_id)
    on conflict (user_id) do nothing;
    select c.customer_id into v_id from tokenbill.stripe_customers c where c.user_id = p_user_id;
    return v_id;
end
$$;
comment on function api.record_stripe_customer(uuid, text) is 'Record the Stripe Customer created for a user; returns the one on record (first wins); TB004 for another user''s Customer.';

revoke all on function api.record_stripe_customer(uuid, text) from public;
grant execute on function api.record_stripe_customer(uuid, text) to tokenbill_app;

create view api.stripe_customers as
    select user_id, customer_id, created_at from tokenbill.stripe_customers;
comment on view api.stripe_customers is 'Each account''s Stripe Customer id, passed as customer to every Checkout Session and PaymentIntent.';
grant select on api.stripe_customers to tokenbill_app, tokenbill_admin;

-- ============================================================================================
-- Auto top-up settings and outbox
-- ============================================================================================
create table tokenbill.auto_topup_settings (
    user_id               uuid primary key references tokenbill.users (id),
    enabled               boolean not null default false,
    threshold             integer not null check (threshold between 1 and 1000000),
    package_code          text not null references tokenbill.packages (code),
    monthly_cap_cents     integer not null check (monthly_cap_cents between 0 and 100000000),
    consecutive_failures  integer not null default 0 check (consecutive_failures >= 0),
    disabled_reason       text,
    updated_at            timestamptz not null default now()
);
comment on table tokenbill.auto_topup_settings is 'Per account: buy package_code off-session when a consumption takes the balance below threshold, at most monthly_cap_cents per calendar month (UTC).';

create table tokenbill.auto_topups (
    id                 bigint generated always as identity primary key,
    user_id            uuid not null references tokenbill.users (id),
    ledger_id          bigint not null unique references tokenbill.ledger (id),
    package_code       text not null references tokenbill.packages (code),
    amount_cents       integer not null check (amount_cents > 0),
    currency           text not null,
    month              date not null,
    idempotency_key    text not null unique,
    status             text not null default 'pending'
                       check (status in ('pending', 'processing', 'requires_action', 'succeeded',
                                         'failed', 'canceled')),
    payment_intent_id  text unique,
    action_url         text,
    error              text,
    attempts           integer not null default 0,
    next_attempt_at    timestamptz not null default now(),
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);
create index auto_topups_outbox_idx on tokenbill.auto_topups (next_attempt_at, id) where status = 'pending';
create index auto_topups_month_idx on tokenbill.auto_topups (user_id, month);
-- at most one top-up in flight per account
create unique index auto_topups_one_open on tokenbill.auto_topups (user_id)
    where status in ('pending', 'processing', 'requires_action');
comment on table tokenbill.auto_topups is 'One row per threshold crossing that queued an off-session purchase; the outbox of flask auto-topup. Tokens come from the payment''s webhook, never from here.';

/** The calendar month (UTC) a top-up counts against. */
create function tokenbill.topup_month(p_at timestamptz) returns date
language sql immutable set search_path = '' as $$
    select (date_trunc('month', p_at at time zone 'UTC'))::date;
$$;
comment on function tokenbill.topup_month(timestamptz) is 'The calendar month (UTC) a top-up created at p_at counts against for the monthly cap.';

/**
 * Queue one top-up when this consumption/reservation crossed the user's auto top-up threshold,
 * unless one is already in flight or it would take the month's pending + succeeded top-ups
 * over the cap. The settings row lock serialises the cap check of concurrent crossings.
 */
create function tokenbill.queue_auto_topup() returns trigger
language plpgsql set search_path = '' as $$
declare
    v_set tokenbill.auto_topup_settings;
    v_pkg tokenbill.packages;
    v_month date := tokenbill.topup_month(now());
    v_committed bigint;
begin
    select * into v_set from tokenbill.auto_topup_settings s
     where s.user_id = new.user_id and s.enabled
       for update;
    if not found
       or not (new.balance_after < v_set.threshold and new.balance_after - new.delta >= v_set.threshold) then
        return null;
    end if;
    select * into v_pkg from tokenbill.packages k where k.code = v_set.package_code and k.active;
    if not found then
        return null;
    end if;
    if exists (select from tokenbill.auto_topups t
                where t.user_id = new.user_id
                  and t.status in ('pending', 'processing', 'requires_action')) then
        return null;
    end if;
    select coalesce(sum(t.amount_cents), 0) into v_committed
      from tokenbill.auto_topups t
     where t.user_id = new.user_id and t.month = v_month
       and t.status in ('pending', 'processing', 'requires_action', 'succeeded');
    if v_committed + v_pkg.amount_cents > v_set.monthly_cap_cents then
        return null;
    end if;
    insert into tokenbill.auto_topups
           (user_id, ledger_id, package_code, amount_cents, currency, month, idempotency_key)
    values (new.user_id, new.id, v_pkg.code, v_pkg.amount_cents, v_pkg.currency, v_month,
            'tokenbill-topup-' || new.user_id || '-' || new.id);
    return null;
end
$$;
comment on function tokenbill.queue_auto_topup() is 'Ledger trigger: queue one auto top-up per downward threshold crossing, within the monthly cap.';

create trigger ledger_auto_topup
    after insert on tokenbill.ledger
    for each row when (new.kind::text in ('consumption', 'reserve'))
    execute function tokenbill.queue_auto_topup();

/**
 * A top-up failed (declined, no saved card, 3-D Secure abandoned): record it once and count
 * it; the third failure in a row turns auto top-up off and says why.
 */
create function tokenbill.fail_auto_topup(p_topup_id bigint, p_error text)
returns void
language plpgsql set search_path = '' as $$
declare
    v_user uuid;
begin
    update tokenbill.auto_topups t
       set status = 'failed', error = left(coalesce(p_error, 'payment failed'), 1000),
           action_url = null, updated_at = now()
     where t.id = p_topup_id and t.status not in ('failed', 'succeeded', 'canceled')
    returning t.user_id into v_user;
    if v_user is null then
        return;
    end if;
    update tokenbill.auto_topup_settings s
       set consecutive_failures = s.consecutive_failures + 1,
           enabled = s.enabled and s.consecutive_failures + 1 < 3,
           disabled_reason = case when s.enabled and s.consecutive_failures + 1 >= 3
                                  then format('Auto top-up was turned off after 3 failed payments in a row (last: %s).',
                                              left(coalesce(p_error, 'payment failed'), 200))
                                  else s.disabled_reason end,
           updated_at = now()
     where s.user_id = v_user;
end
$$;
comment on function tokenbill.fail_auto_topup(bigint, text) is 'Record a failed top-up once; three failures in a row turn auto top-up off with a reason for the user.';

/** A top-up's payment was granted: it succeeded and the failure count starts again. */
create function tokenbill.succeed_auto_topup(p_topup_id bigint)
returns void
language plpgsql set search_path = '' as $$
declare
    v_user uuid;
begin
    update tokenbill.auto_topups t
       set status = 'succeeded', action_url = null, error = null, updated_at = now()
     where t.id = p_topup_id and t.status <> 'succeeded'
    returning t.user_id into v_user;
    if v_user is not null then
        update tokenbill.auto_topup_settings s set consecutive_failures = 0, updated_at = now()
         where s.user_id = v_user;
    end if;
end
$$;
comment on function tokenbill.succeed_auto_topup(bigint) is 'Mark a top-up whose payment was granted as succeeded and reset the failure count.';

/** payments trigger: a granted or failed PaymentIntent of a top-up moves the top-up row. */
create function tokenbill.follow_auto_topup_payment() returns trigger
language plpgsql set search_path = '' as $$
declare
    v_topup bigint;
begin
    -- An off-session charge that needs 3-D Secure also fails (authentication_required): the
    -- top-up stays requires_action, waiting for the user, not counted as a failure.
    select t.id into v_topup from tokenbill.auto_topups t
     where t.payment_intent_id = new.payment_intent_id
       and (new.status = 'granted' or t.status <> 'requires_action');
    if v_topup is null then
        return null;
    end if;
    if new.status = 'granted' then
        perform tokenbill.succeed_auto_topup(v_topup);
    elsif new.status = 'failed' then
        perform tokenbill.fail_auto_topup(v_topup, new.reason);
    end if;
    return null;
end
$$;
comment on function tokenbill.follow_auto_topup_payment() is 'Payments trigger: the webhook''s grant or decline of a top-up''s PaymentIntent settles the top-up row.';

create trigger payments_follow_auto_topup
    after insert or update of status on tokenbill.payments
    for each row when (new.status in ('granted', 'failed'))
    execute function tokenbill.follow_auto_topup_payment();

-- ============================================================================================
-- API: settings (web role), the worker (notifier role), views
-- ============================================================================================
/**
 * Save a user's auto top-up settings. Saving clears the notice of why it was turned off (the
 * user has seen the page); turning it on clears the failure count; turning it off cancels a
 * queued top-up not yet sent to Stripe and one waiting for 3-D Secure (completed anyway, its
 * payment still grants through the webhook).
 */
create function api.set_auto_topup(
    p_user_id uuid, p_enabled boolean, p_threshold integer, p_package_code text,
    p_monthly_cap_cents integer)
returns void
language plpgsql security definer set search_path = '' as $$
declare
    v_pkg tokenbill.packages;
begin
    if p_threshold is null or p_threshold not between 1 and 1000000 then
        raise exception 'threshold must be between 1 and 1000000 tokens' using errcode = 'TB003';
    end if;
    if p_monthly_cap_cents is null or p_monthly_cap_cents not between 0 and 100000000 then
        raise exception 'monthly cap must be between 0 and 100000000 cents' using errcode = 'TB003';
    end if;
    select * into v_pkg from tokenbill.packages k where k.code = p_package_code and k.active;
    if not found then
        raise exception 'unknown package %', p_package_code using errcode = 'TB003';
    end if;
    if coalesce(p_enabled, false) and p_monthly_cap_cents < v_pkg.amount_cents then
        raise exception 'the monthly cap (% cents) is below the package price (% cents)',
            p_monthly_cap_cents, v_pkg.amount_cents using errcode = 'TB003';
    end if;
    perform from tokenbill.users where id = p_user_id;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    insert into tokenbill.auto_topup_settings as s
           (user_id, enabled, threshold, package_code, monthly_cap_cents)
    values (p_user_id, coalesce(p_enabled, false), p_threshold, v_pkg.code, p_monthly_cap_cents)
    on conflict (user_id) do update
        set enabled = excluded.enabled, threshold = excluded.threshold,
            package_code = excluded.package_code, monthly_cap_cents = excluded.monthly_cap_cents,
            consecutive_failures = case when excluded.enabled then 0 else s.consecutive_failures end,
            disabled_reason = null,
            updated_at = now();
    if not coalesce(p_enabled, false) then
        update tokenbill.auto_topups t set status = 'canceled', action_url = null, updated_at = now()
         where t.user_id = p_user_id and t.status in ('pending', 'requires_action');
    end if;
end
$$;
comment on function api.set_auto_topup(uuid, boolean, integer, text, integer) is 'Save auto top-up settings; on clears the failure count, off cancels a queued top-up.';

revoke all on function api.set_auto_topup(uuid, boolean, integer, text, integer) from public;
grant execute on function api.set_auto_topup(uuid, boolean, integer, text, integer) to tokenbill_app;

/**
 * Lock the oldest due queued top-up (skipping ones another worker holds) with what the worker
 * needs to charge it. The caller creates the PaymentIntent and calls api.finish_auto_topup in
 * the same transaction, then commits: one row per transaction.
 */
create function api.claim_auto_topup()
returns table (id bigint, user_id uuid, customer_id text, package_code text, tokens integer,
               amount_cents integer, currency text, idempotency_key text, attempts integer)
language sql security definer set search_path = '' as $$
    with claimed as (
        select t.* from tokenbill.auto_topups t
         where t.status = 'pending' and t.next_attempt_at <= now()
         order by t.next_attempt_at, t.id
         limit 1
         for update skip locked)
    select c.id, c.user_id, sc.customer_id, c.package_code, k.tokens, c.amount_cents,
           c.currency, c.idempotency_key, c.attempts
      from claimed c
      join tokenbill.packages k on k.code = c.package_code
      left join tokenbill.stripe_customers sc on sc.user_id = c.user_id;
$$;
comment on function api.claim_auto_topup() is 'Lock one due queued top-up for the worker (FOR UPDATE SKIP LOCKED).';

revoke all on function api.claim_auto_topup() from public;
grant execute on function api.claim_auto_topup() to tokenbill_notifier;

/**
 * Record what creating a top-up's PaymentIntent did: 'processing' (created; the webhook will
 * grant), 'requires_action' (3-D Secure: p_action_url for the user), 'failed' (declined, no
 * card) or 'retry' (Stripe unreachable: stays queued, tried again later with the same key).
 * Returns the top-up's status. A webhook that already granted or declined the intent wins.
 */
create function api.finish_auto_topup(
    p_topup_id bigint, p_outcome text, p_payment_intent_id text default null,
    p_action_url text default null, p_error text default null)
returns text
language plpgsql security definer set search_path = '' as $$
declare
    v_topup tokenbill.auto_topups;
    v_paid text;
begin
    if p_outcome is null or p_outcome not in ('processing', 'requires_action', 'failed', 'retry') then
        raise exception 'unknown top-up outcome %', p_outcome using errcode = 'TB003';
    end if;
    if p_action_url is not null and p_action_url !~ '^https?://' then
        raise exception 'an action url must be http(s)' using errcode = 'TB003';
    end if;
    select * into v_topup from tokenbill.auto_topups t where t.id = p_topup_id for update;
    if not found then
        raise exception 'unknown top-up %', p_topup_id using errcode = 'TB002';
    end if;
    if v_topup.status <> 'pending' then
        return v_topup.status;
    end if;
    update tokenbill.auto_topups t
       set payment_intent_id = coalesce(p_payment_intent_id, t.payment_intent_id),
           attempts = t.attempts + 1,
           updated_at = now()
     where t.id = p_topup_id;

    if p_outcome = 'retry' then
        update tokenbill.auto_topups t
           set error = left(p_error, 1000),
               next_attempt_at = now() + least(t.attempts, 60) * interval '1 minute'
         where t.id = p_topup_id;
    elsif p_outcome = 'failed' then
        perform tokenbill.fail_auto_topup(p_topup_id, p_error);
    else
        update tokenbill.auto_topups t
           set status = p_outcome, action_url = p_action_url, error = left(p_error, 1000)
         where t.id = p_topup_id;
    end if;

    -- the webhook may have been faster than this commit
    select p.status into v_paid from tokenbill.payments p
     where p.payment_intent_id = p_payment_intent_id;
    if v_paid = 'granted' then
        perform tokenbill.succeed_auto_topup(p_topup_id);
    elsif v_paid = 'failed' and p_outcome <> 'requires_action' then
        perform tokenbill.fail_auto_topup(p_topup_id, (select p.reason from tokenbill.payments p
                                                        where p.payment_intent_id = p_payment_intent_id));
    end if;
    return (select t.status from tokenbill.auto_topups t where t.id = p_topup_id);
end
$$;
comment on function api.finish_auto_topup(bigint, text, text, text, text) is 'Record the outcome of creating a top-up''s PaymentIntent (processing, requires_action, failed, retry).';

revoke all on function api.finish_auto_topup(bigint, text, text, text, text) from public;
grant execute on function api.finish_auto_topup(bigint, text, text, text, text) to tokenbill_notifier;

create view api.auto_topup_settings as
    select s.user_id, s.enabled, s.threshold, s.package_code, s.monthly_cap_cents,
           s.consecutive_failures, s.disabled_reason, s.updated_at,
           coalesce((select sum(t.amount_cents) from tokenbill.auto_topups t
                      -- tokenbill.topup_month inlined: a view's callers cannot execute internals
                      where t.user_id = s.user_id
                        and t.month = (date_trunc('month', now() at time zone 'UTC'))::date
                        and t.status in ('pending', 'processing', 'requires_action', 'succeeded')),
                    0)::integer as month_committed_cents
      from tokenbill.auto_topup_settings s;
comment on view api.auto_topup_settings is 'Each account''s auto top-up settings, failure count, why it was turned off, and what this month already committed.';

create view api.auto_topups as
    select id, user_id, ledger_id, package_code, amount_cents, currency, month, status,
           payment_intent_id, action_url, error, attempts, created_at, updated_at
      from tokenbill.auto_topups;
comment on view api.auto_topups is 'Queued and past auto top-ups with their status; requires_action carries the link to complete 3-D Secure.';

grant select on api.auto_topup_settings, api.auto_topups to tokenbill_app, tokenbill_admin;

comment on role tokenbill_notifier is 'Outbox workers: scripts/alert_notifier.py (low-balance notifications) and flask auto-topup (claims and finishes top-ups; cannot grant).';

-- ============================================================================================
-- Promotion codes, tax and invoices on Checkout purchases
-- ============================================================================================
/*
 * Tokens still come from the package, never from the amount paid. A Checkout Session lowered
 * by a Stripe discount (total_details.amount_discount) or raised by tax (amount_tax) is
 * granted when its subtotal — the one line item's price, checked too when the session carries
 * its line items — is the package's price and total = subtotal - discount + tax. A total
 * lowered without a discount still reaches api.grant_for_payment as the total, and is refused.
 * Replaced (from 0013's / 0005's text, changes marked "0019"): tokenbill.fulfil_checkout_session,
 * tokenbill.fulfil_payment_intent; api.handle_stripe_event (0015's text) gains invoice events.
 */
alter table tokenbill.payments
    add column subtotal_cents   integer check (subtotal_cents >= 0),
    add column discount_cents   integer not null default 0 check (discount_cents >= 0),
    add column tax_cents        integer not null default 0 check (tax_cents >= 0),
    add column promotion_code   text,
    add column invoice_id       text,
    add column invoice_url      text check (invoice_url ~ '^https://'),
    add column invoice_pdf_url  text check (invoice_pdf_url ~ '^https://');
create index payments_invoice_idx on tokenbill.payments (invoice_id) where invoice_id is not null;
comment on column tokenbill.payments.amount_cents is 'Total paid (after discounts, with tax): refunds claw back in proportion to it.';
comment on column tokenbill.payments.discount_cents is 'Stripe discount (promotion code) on a Checkout purchase; tokens still come from the package.';
comment on column tokenbill.payments.tax_cents is 'Tax Stripe computed (automatic_tax); net = amount_cents - tax_cents.';

/**
 * The amount a Checkout Session's grant compares with the package: its subtotal when a
 * discount or tax explains the difference to the total (one line item, quantity 1, whose
 * subtotal is the session's), else its total as before (so an unexplained lower total is
 * refused by api.grant_for_payment).
 */
create function tokenbill.checkout_list_amount(p_session jsonb) returns integer
language plpgsql immutable set search_path = '' as $$
declare
    v_total integer := tokenbill.stripe_int(p_session -> 'amount_total');
    v_subtotal integer := tokenbill.stripe_int(p_session -> 'amount_subtotal');
    v_discount integer := coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_discount'), 0);
    v_tax integer := coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_tax'), 0);
    v_items jsonb := p_session -> 'line_items' -> 'data';
begin
    if (v_discount = 0 and v_tax = 0) or v_total is null or v_subtotal is null
       or v_discount < 0 or v_tax < 0 or v_discount > v_subtotal
       or v_total <> v_subtotal - v_discount + v_tax then
        return v_total;
    end if;
    if jsonb_typeof(v_items) = 'array'
       and (jsonb_array_length(v_items) <> 1
            or tokenbill.stripe_int(v_items -> 0 -> 'quantity') is distinct from 1
            or tokenbill.stripe_int(v_items -> 0 -> 'amount_subtotal') is distinct from v_subtotal
            or tokenbill.stripe_int(v_items -> 0 -> 'price' -> 'unit_amount') is distinct from v_subtotal) then
        return v_total;
    end if;
    return v_subtotal;
end
$$;
comment on function tokenbill.checkout_list_amount(jsonb) is 'The amount a Checkout grant checks against the package: the subtotal when a discount or tax explains the total, else the total.';

/** Keep what a Checkout Session says about the money: total, subtotal, discount, tax, invoice. */
create function tokenbill.record_checkout_amounts(p_session jsonb) returns void
language plpgsql set search_path = '' as $$
declare
    v_pi text := tokenbill.stripe_id(p_session -> 'payment_intent');
    v_invoice jsonb := p_session -> 'invoice';
    v_pay bigint;
begin
    update tokenbill.payments p
       set amount_cents = coalesce(tokenbill.stripe_int(p_session -> 'amount_total'), p.amount_cents),
           subtotal_cents = coalesce(tokenbill.stripe_int(p_session -> 'amount_subtotal'), p.subtotal_cents),
           discount_cents = coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_discount'), p.discount_cents),
           tax_cents = coalesce(tokenbill.stripe_int(p_session -> 'total_details' -> 'amount_tax'), p.tax_cents),
           promotion_code = coalesce(tokenbill.stripe_id(p_session -> 'discounts' -> 0 -> 'promotion_code'),
                                     p.promotion_code),
           invoice_id = coalesce(tokenbill.stripe_id(v_invoice), p.invoice_id),
           invoice_url = coalesce(case when v_invoice ->> 'hosted_invoice_url' ~ '^https://'
                                       then v_invoice ->> 'hosted_invoice_url' end, p.invoice_url),
           invoice_pdf_url = coalesce(case when v_invoice ->> 'invoice_pdf' ~ '^https://'
                                           then v_invoice ->> 'invoice_pdf' end, p.invoice_pdf_url),
           updated_at = now()
     where p.payment_intent_id = v_pi and p.status = 'granted'
       and p.checkout_session_id = p_session ->> 'id'
    returning p.id into v_pay;
    if v_pay is not null then
        -- refunds claw back in proportion to the total actually paid
        perform tokenbill.settle_payment(v_pay);
    end if;
end
$$;
comment on function tokenbill.record_checkout_amounts(jsonb) is 'Record total/subtotal/discount/tax/promotion code/invoice of a granted Checkout purchase.';

/** invoice.paid / invoice.finalized: keep the hosted invoice and PDF links on the payment. */
create function tokenbill.record_invoice(p_invoice jsonb)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_id text := p_invoice ->> 'id';
    v_pi text := tokenbill.stripe_id(p_invoice -> 'payment_intent');
begin
    update tokenbill.payments p
       set invoice_id = v_id,
           invoice_url = coalesce(case when p_invoice ->> 'hosted_invoice_url' ~ '^https://'
                                       then p_invoice ->> 'hosted_invoice_url' end, p.invoice_url),
           invoice_pdf_url = coalesce(case when p_invoice ->> 'invoice_pdf' ~ '^https://'
                                           then p_invoice ->> 'invoice_pdf' end, p.invoice_pdf_url),
           updated_at = now()
     where p.invoice_id = v_id or (v_pi is not null and p.payment_intent_id = v_pi);
    if not found then
        return query select 'ignored'::text, 'invoice of no payment tokenbill knows'::text;
        return;
    end if;
    return query select 'processed'::text, 'invoice links recorded'::text;
end
$$;
comment on function tokenbill.record_invoice(jsonb) is 'Keep an invoice''s hosted and PDF links on the payment it belongs to (by invoice id or PaymentIntent).';

/**
 * Fulfil a Checkout Session object (from an event, the success page or reconciliation).
 * A session whose client_reference_id and metadata.user_id disagree is rejected with the
 * reason; a session never moves to a second PaymentIntent once it has one. 0019: a discount
 * or tax explained by the session is checked against the package through its subtotal, and
 * the amounts and invoice are recorded on the payment.
 */
create or replace function tokenbill.fulfil_checkout_session(
    p_session jsonb, p_stripe_event_id text default null, p_event_type text default null)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_id text := p_session ->> 'id';
    v_pi text := tokenbill.stripe_id(p_session -> 'payment_intent');
    v_payment_status text := p_session ->> 'payment_status';
    v_charge jsonb := p_session -> 'payment_intent' -> 'latest_charge';
    v_ref text := p_session ->> 'client_reference_id';
    v_meta_user text := p_session -> 'metadata' ->> 'user_id';
    v_grant record;
begin
    if v_id is null then
        raise exception 'checkout session without an id' using errcode = 'TB003';
    end if;

    update tokenbill.checkout_sessions s
       set status = case when s.status = 'open' then coalesce(p_session ->> 'status', s.status)
                         else s.status end,
           payment_status = coalesce(v_payment_status, s.payment_status),
           payment_intent_id = coalesce(s.payment_intent_id, v_pi),
           updated_at = now()
     where s.id = v_id;

    if p_event_type = 'checkout.session.expired' then
        return query select 'processed'::text, 'session expired'::text;
        return;
    end if;
    if p_event_type = 'checkout.session.async_payment_failed' then
        if v_pi is not null then
            perform tokenbill.record_payment_failure(v_pi, 'asynchronous payment failed');
        end if;
        return query select 'processed'::text, 'asynchronous payment failed; nothing granted'::text;
        return;
    end if;
    if v_payment_status = 'unpaid' then
        return query select 'processed'::text,
            'payment pending: waiting for checkout.session.async_payment_succeeded'::text;
        return;
    end if;
    if v_payment_status is distinct from 'paid' then
        return query select 'ignored'::text, format('payment_status is %s', v_payment_status);
        return;
    end if;
    if v_pi is null then
        return query select 'rejected'::text, 'paid session without a payment intent'::text;
        return;
    end if;
    if v_ref is not null and v_meta_user is not null and v_ref <> v_meta_user then
        return query select 'rejected'::text,
            format('conflicting user ids: client_reference_id %s, metadata.user_id %s', v_ref, v_meta_user);
        return;
    end if;

    select * into v_grant from api.grant_for_payment(
        v_pi,
        coalesce(v_ref, v_meta_user),
        p_session -> 'metadata' ->> 'package',
        tokenbill.checkout_list_amount(p_session),  -- 0019: was amount_total
        p_session ->> 'currency',
        v_id,
        p_stripe_event_id,
        tokenbill.stripe_id(v_charge),
        case when jsonb_typeof(v_charge) = 'object' then v_charge ->> 'receipt_url' end);
    if v_grant.status <> 'rejected' then
        perform tokenbill.record_checkout_amounts(p_session);  -- 0019
    end if;
    return query select
        case when v_grant.status = 'rejected' then 'rejected' else 'processed' end,
        coalesce(v_grant.reason, format('%s %s tokens', v_grant.status, v_grant.tokens));
end
$$;

/**
 * payment_intent.succeeded: grant, when its metadata says tokenbill created it. 0019: an
 * intent of a Checkout Session (metadata source = checkout) whose amount differs from the
 * package (a discount or tax) waits for the session's event, which can explain the amount.
 */
create or replace function tokenbill.fulfil_payment_intent(p_intent jsonb, p_stripe_event_id text)
returns table (outcome text, detail text)
language plpgsql set search_path = '' as $$
declare
    v_meta jsonb := coalesce(p_intent -> 'metadata', '{}');
    v_charge jsonb := coalesce(p_intent -> 'latest_charge', p_intent -> 'charges' -> 'data' -> 0);
    v_amount integer := coalesce(tokenbill.stripe_int(p_intent -> 'amount_received'),
                                 tokenbill.stripe_int(p_intent -> 'amount'));
    v_grant record;
begin
    if v_meta ->> 'user_id' is null and v_meta ->> 'package' is null then
        return query select 'ignored'::text, 'payment intent without tokenbill metadata'::text;
        return;
    end if;
    -- 0019
    if v_meta ->> 'source' = 'checkout'
       and not exists (select from tokenbill.payments p
                        where p.payment_intent_id = p_intent ->> 'id' and p.status = 'granted')
       and v_amount is distinct from (select k.amount_cents from tokenbill.packages k
                                       where k.code = v_meta ->> 'package') then
        return query select 'processed'::text,
            'amount differs from the package (discount or tax): waiting for the checkout session'::text;
        return;
    end if;
    select * into v_grant from api.grant_for_payment(
        p_intent ->> 'id',
        v_meta ->> 'user_id',
        v_meta ->> 'package',
        v_amount,
        p_intent ->> 'currency',
        null,
        p_stripe_event_id,
        tokenbill.stripe_id(v_charge),
        case when jsonb_typeof(v_charge) = 'object' then v_charge ->> 'receipt_url' end);
    return query select
        case when v_grant.status = 'rejected' then 'rejected' else 'processed' end,
        coalesce(v_grant.reason, format('%s %s tokens', v_grant.status, v_grant.tokens));
end
$$;

create or replace view api.purchases as
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
           end as display_status,
           -- 0019
           p.subtotal_cents, p.discount_cents, p.tax_cents,
           p.amount_cents - p.tax_cents as net_cents, p.promotion_code,
           p.invoice_url, p.invoice_pdf_url
      from tokenbill.payments p;

/**
 * Store a verified Stripe event and apply it, once (see 0005). p_livemode is the mode of the
 * Stripe key the caller holds: an event of the other mode is recorded as 'rejected' and never
 * applied (a test-mode event must not grant on a live deployment, nor the reverse).
 * 0019 (from 0015's text): invoice.paid / invoice.finalized record the invoice's links.
 */
create or replace function api.handle_stripe_event(p_event jsonb, p_livemode boolean default null)
returns table (event_id text, outcome text, detail text)
language plpgsql security definer set search_path = '' as $$
declare
    v_id text := p_event ->> 'id';
    v_type text := p_event ->> 'type';
    v_obj jsonb := p_event -> 'data' -> 'object';
    v_livemode boolean;
    v_outcome text;
    v_detail text;
    v_moved integer;
begin
    if v_id is null or v_type is null or jsonb_typeof(v_obj) is distinct from 'object' then
        raise exception 'malformed Stripe event' using errcode = 'TB003';
    end if;
    v_livemode := case jsonb_typeof(p_event -> 'livemode') when 'boolean'
                       then (p_event ->> 'livemode')::boolean end;

    -- Dedupe: the row lock serialises concurrent deliveries of one event.
    insert into tokenbill.stripe_events as e (id, type, livemode, api_version, payload, outcome)
    values (v_id, v_type, v_livemode, p_event ->> 'api_version', p_event, 'received')
    on conflict (id) do update
        set attempts = e.attempts + 1, payload = excluded.payload, outcome = 'received'
        where e.outcome = 'failed';
    if not found then
        select e.outcome, e.detail into v_outcome, v_detail from tokenbill.stripe_events e where e.id = v_id;
        return query select v_id, 'duplicate'::text, format('already %s: %s', v_outcome, v_detail);
        return;
    end if;

    if p_livemode is not null and v_livemode is distinct from p_livemode then
        v_outcome := 'rejected';
        v_detail := format('livemode mismatch: event livemode is %s, the key is %s mode; not applied',
                           coalesce(v_livemode::text, 'missing'),
                           case when p_livemode then 'live' else 'test' end);
    else
    begin
        case
            when v_type in ('checkout.session.completed', 'checkout.session.async_payment_succeeded',
                            'checkout.session.async_payment_failed', 'checkout.session.expired') then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.fulfil_checkout_session(v_obj, v_id, v_type) f;
            when v_type = 'payment_intent.succeeded' then
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.fulfil_payment_intent(v_obj, v_id) f;
            when v_type = 'payment_intent.payment_failed' then
                if v_obj -> 'metadata' ->> 'user_id' is null then
                    v_outcome := 'ignored';
                    v_detail := 'payment intent without tokenbill metadata';
                else
                    perform tokenbill.record_payment_failure(  -- 0015: the intent, not its id
                        v_obj,
                        coalesce(v_obj -> 'last_payment_error' ->> 'message', 'payment failed'));
                    v_outcome := 'processed';
                    v_detail := 'payment failure recorded';
                end if;
            when v_type in ('invoice.paid', 'invoice.finalized') then  -- 0019
                select f.outcome, f.detail into v_outcome, v_detail
                  from tokenbill.record_invoice(v_obj) f;
            when v_type in ('charge.succeeded', 'charge.updated') then
                if v_obj ->> 'payment_intent' is null then
                    v_outcome := 'ignored';
                    v_detail := 'charge without a payment intent';
                else
                    update tokenbill.payments p
                       set charge_id = v_obj ->> 'id',
                           receipt_url = coalesce(v_obj ->> 'receipt_url', p.receipt_url),
                           updated_at = now()
                     where p.payment_intent_id = tokenbill.stripe_id(v_obj -> 'payment_intent');
                    if not found then
                        insert into tokenbill.payments (payment_intent_id, charge_id, receipt_url)
                        values (tokenbill.stripe_id(v_obj -> 'payment_intent'), v_obj ->> 'id',
                                v_obj ->> 'receipt_url')
                        on conflict (payment_intent_id) do nothing;
                    end if;
                    v_outcome := 'processed';
                    v_detail := 'receipt recorded';
                end if;
            when v_type = 'charge.refunded' then
                v_moved := api.revoke_for_refund(
                    tokenbill.stripe_id(v_obj -> 'payment_intent'), v_obj ->> 'id',
                    tokenbill.stripe_int(v_obj -> 'amount_refunded'), v_id);
                v_outcome := 'processed';
                v_detail := format('refunded %s cents in total; %s tokens taken back',
                                   v_obj ->> 'amount_refunded', v_moved);
            when v_type in ('charge.dispute.created', 'charge.dispute.updated',
                            'charge.dispute.closed', 'charge.dispute.funds_withdrawn',
                            'charge.dispute.funds_reinstated') then
                v_moved := api.revoke_for_dispute(
                    v_obj ->> 'id', tokenbill.stripe_id(v_obj -> 'payment_intent'),
                    tokenbill.stripe_id(v_obj -> 'charge'), tokenbill.stripe_int(v_obj -> 'amount'),
                    v_obj ->> 'status', v_obj ->> 'reason', v_id);
                v_outcome := 'processed';
                v_detail := format('dispute %s; %s tokens %s', v_obj ->> 'status', abs(v_moved),
                                   case when v_moved < 0 then 'given back' else 'taken back' end);
            else
                v_outcome := 'ignored';
                v_detail := 'event type not handled';
        end case;
    exception
        -- Deterministic: retrying cannot help, so record it and let Stripe stop.
        when sqlstate 'TB002' or sqlstate 'TB003' or invalid_text_representation
             or numeric_value_out_of_range or unique_violation then
            v_outcome := 'rejected';
            v_detail := sqlerrm;
    end;
    end if;

    update tokenbill.stripe_events e
       set outcome = v_outcome, detail = v_detail, processed_at = now()
     where e.id = v_id;
    return query select v_id, v_outcome, v_detail;
end
$$;
