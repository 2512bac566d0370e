/*
 * 0010 — numbers for /metrics and the admin charts, counted where the facts are.
 *
 * Counting in the database keeps the numbers exact across gunicorn workers and restarts.
 */

create index ledger_kind_created_idx on tokenbill.ledger (kind, created_at);
create index payments_granted_idx on tokenbill.payments (granted_at) where status = 'granted';

/**
 * Business counters as (metric, labels, value) rows; webapp/metrics.py renders them in the
 * Prometheus text format. Totals since the beginning, so they behave as counters.
 */
create function api.billing_metrics()
returns table (metric text, labels jsonb, value bigint)
language sql stable security definer set search_path = '' as $$
    select 'tokenbill_stripe_events_total', jsonb_build_object('type', type, 'outcome', outcome),
           count(*)
      from tokenbill.stripe_events group by type, outcome
    union all
    select 'tokenbill_duplicate_grants_prevented_total', '{}'::jsonb,
           count(*) from tokenbill.stripe_events where detail like 'already_granted%'
    union all
    select 'tokenbill_payments', jsonb_build_object('status', status), count(*)
      from tokenbill.payments group by status
    union all
    select 'tokenbill_ledger_entries_total', jsonb_build_object('kind', kind::text), count(*)
      from tokenbill.ledger group by kind
    union all
    select 'tokenbill_ledger_tokens_total', jsonb_build_object('kind', kind::text), sum(abs(delta))
      from tokenbill.ledger group by kind
    union all
    select 'tokenbill_checkout_sessions_total',
           jsonb_build_object('status', status, 'payment_status', coalesce(payment_status, 'none')),
           count(*)
      from tokenbill.checkout_sessions group by status, payment_status
    union all
    select 'tokenbill_net_revenue_cents', jsonb_build_object('currency', currency),
           sum(amount_cents) - sum(refunded_cents)
      from tokenbill.payments where status = 'granted' group by currency
    union all
    select 'tokenbill_low_balance_alerts_total', '{}'::jsonb, count(*)
      from tokenbill.low_balance_alerts;
$$;

revoke all on function api.billing_metrics() from public;
grant execute on function api.billing_metrics() to tokenbill_app;

/**
 * Per-day totals for the last p_days days (UTC), one row per day even when nothing happened:
 * tokens sold and consumed, revenue (net of refunds, per payment's day), Checkout Sessions
 * created and paid.
 */
create function api.daily_stats(p_days integer default 30)
returns table (day date, tokens_sold bigint, tokens_consumed bigint, revenue_cents bigint,
               sessions_created bigint, sessions_paid bigint)
language sql stable security definer set search_path = '' as $$
    with days as (
        select generate_series((now() at time zone 'utc')::date - (least(greatest(p_days, 1), 366) - 1),
                               (now() at time zone 'utc')::date, interval '1 day')::date as day),
    sold as (
        select (granted_at at time zone 'utc')::date as day, sum(tokens_granted) as tokens,
               sum(amount_cents - refunded_cents) as cents
          from tokenbill.payments
         where status = 'granted' and granted_at >= (select min(day) from days)
         group by 1),
    consumed as (
        select (created_at at time zone 'utc')::date as day, sum(-delta) as tokens
          from tokenbill.ledger
         where kind = 'consumption' and created_at >= (select min(day) from days)
         group by 1),
    released as (
        select (created_at at time zone 'utc')::date as day, sum(delta) as tokens
          from tokenbill.ledger
         where kind = 'consumption_refund' and created_at >= (select min(day) from days)
         group by 1),
    sessions as (
        select (created_at at time zone 'utc')::date as day, count(*) as created,
               count(*) filter (where payment_status = 'paid') as paid
          from tokenbill.checkout_sessions
         where created_at >= (select min(day) from days)
         group by 1)
    select d.day, coalesce(s.tokens, 0), coalesce(c.tokens, 0) - coalesce(r.tokens, 0),
           coalesce(s.cents, 0), coalesce(x.created, 0), coalesce(x.paid, 0)
      from days d
      left join sold s on s.day = d.day
      left join consumed c on c.day = d.day
      left join released r on r.day = d.day
      left join sessions x on x.day = d.day
     order by d.day;
$$;

revoke all on function api.daily_stats(integer) from public;
grant execute on function api.daily_stats(integer) to tokenbill_app;
