/*
 * 0009 — low-balance alerts.
 *
 * When a consumption takes a balance from at or above the user's threshold to below it, a
 * trigger records one alert: once per crossing (topping up and crossing again records another).
 * Alerts double as an outbox: scripts/alert_notifier.py claims unsent ones and posts a signed
 * notification to ALERT_WEBHOOK_URL.
 */

alter table tokenbill.users
    add column low_balance_threshold integer not null default 10
        check (low_balance_threshold between 0 and 1000000);
comment on column tokenbill.users.low_balance_threshold is 'Alert when a consumption takes the balance below this (0 = never).';

create table tokenbill.low_balance_alerts (
    id               bigint generated always as identity primary key,
    user_id          uuid not null references tokenbill.users (id),
    ledger_id        bigint not null unique references tokenbill.ledger (id),
    threshold        integer not null,
    balance          integer not null,
    created_at       timestamptz not null default now(),
    acknowledged_at  timestamptz,
    notified_at      timestamptz,
    notify_attempts  integer not null default 0,
    last_error       text
);
create index low_balance_alerts_user_idx on tokenbill.low_balance_alerts (user_id, id desc);
create index low_balance_alerts_outbox_idx on tokenbill.low_balance_alerts (id) where notified_at is null;

comment on table tokenbill.low_balance_alerts is 'One row per downward crossing of a user''s low-balance threshold; also the notification outbox.';

/** Record an alert when this consumption crossed the user's threshold. */
create function tokenbill.record_low_balance_alert() returns trigger
language plpgsql set search_path = '' as $$
declare
    v_threshold integer;
begin
    select u.low_balance_threshold into v_threshold from tokenbill.users u where u.id = new.user_id;
    if new.balance_after < v_threshold and new.balance_after - new.delta >= v_threshold then
        insert into tokenbill.low_balance_alerts (user_id, ledger_id, threshold, balance)
        values (new.user_id, new.id, v_threshold, new.balance_after);
    end if;
    return null;
end
$$;

create trigger ledger_low_balance_alert
    after insert on tokenbill.ledger
    for each row when (new.kind = 'consumption')
    execute function tokenbill.record_low_balance_alert();

-- ============================================================================================
-- API
-- ============================================================================================
/** Set the user's own alert threshold (0 turns alerts off). */
create function api.set_low_balance_threshold(p_user_id uuid, p_threshold integer)
returns void
language plpgsql security definer set search_path = '' as $$
begin
    if p_threshold is null or p_threshold not between 0 and 1000000 then
        raise exception 'threshold must be between 0 and 1000000' using errcode = 'TB003';
    end if;
    update tokenbill.users set low_balance_threshold = p_threshold where id = p_user_id;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
end
$$;

revoke all on function api.set_low_balance_threshold(uuid, integer) from public;
grant execute on function api.set_low_balance_threshold(uuid, integer) to tokenbill_app;

/** Dismiss the user's open alerts (the header stops showing them). Returns how many. */
create function api.acknowledge_low_balance_alerts(p_user_id uuid)
returns integer
language sql security definer set search_path = '' as $$
    with acked as (
        update tokenbill.low_balance_alerts set acknowledged_at = now()
         where user_id = p_user_id and acknowledged_at is null
        returning 1)
    select count(*)::integer from acked;
$$;

revoke all on function api.acknowledge_low_balance_alerts(uuid) from public;
grant execute on function api.acknowledge_low_balance_alerts(uuid) to tokenbill_app;

/**
 * Lock up to p_limit alerts not yet notified, oldest first, skipping ones another notifier
 * holds. The caller posts them and calls api.finish_alert_notification in the same transaction.
 */
create function api.claim_alert_notifications(p_limit integer default 20)
returns table (id bigint, user_id uuid, email text, threshold integer, balance integer,
               created_at timestamptz, notify_attempts integer)
language sql security definer set search_path = '' as $$
    with claimed as (
        select a.* from tokenbill.low_balance_alerts a
         where a.notified_at is null
         order by a.id
         limit p_limit
         for update skip locked)
    select c.id, c.user_id, u.email, c.threshold, c.balance, c.created_at, c.notify_attempts
      from claimed c join tokenbill.users u on u.id = c.user_id
     order by c.id;
$$;

revoke all on function api.claim_alert_notifications(integer) from public;
grant execute on function api.claim_alert_notifications(integer) to tokenbill_app;

/** Record the result of posting one alert: sent, or the error (it stays in the outbox). */
create function api.finish_alert_notification(p_alert_id bigint, p_error text default null)
returns void
language sql security definer set search_path = '' as $$
    update tokenbill.low_balance_alerts
       set notify_attempts = notify_attempts + 1,
           notified_at = case when p_error is null then now() end,
           last_error = left(p_error, 1000)
     where id = p_alert_id;
$$;

revoke all on function api.finish_alert_notification(bigint, text) from public;
grant execute on function api.finish_alert_notification(bigint, text) to tokenbill_app;

create view api.low_balance_alerts as
    select id, user_id, threshold, balance, created_at, acknowledged_at, notified_at,
           notify_attempts, last_error
      from tokenbill.low_balance_alerts;

/** Accounts, now with the threshold and whether an unacknowledged alert still applies. */
create or replace view api.accounts as
    select u.id, u.email, u.is_admin, u.balance, u.created_at, u.low_balance_threshold,
           (u.balance < u.low_balance_threshold and exists (
                select from tokenbill.low_balance_alerts a
                 where a.user_id = u.id and a.acknowledged_at is null)) as low_balance_alert
      from tokenbill.users u;

grant select on api.low_balance_alerts, api.accounts to tokenbill_app;
