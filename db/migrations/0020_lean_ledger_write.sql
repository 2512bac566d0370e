/*
 * 0020 — the ledger write at the cost of one statement (issue 16), every guarantee kept.
 *
 * A perf profile of api.consume under pgbench (docs/performance.md, "0020") showed where a
 * charge's time went besides the UPDATE and the INSERT themselves:
 *   - CHECK constraints: PostgreSQL 15 re-reads every CHECK of the target table from its
 *     stored node string and plans it again on every statement execution. The ledger's four
 *     CHECKs (enum-to-text casts, arrays) and users' two (lower(btrim(email)) and a LIKE,
 *     evaluated on every balance update although the email never changes there) were about a
 *     third of the backend's CPU. Now: one CHECK on the ledger calling one immutable plpgsql
 *     function (same rules, one small expression to read), and the users rules in a trigger
 *     that fires only when email or low_balance_threshold is written.
 *   - The auto top-up trigger of 0019: a plpgsql call and a settings lookup on every
 *     consumption and reserve. Now post_entry (and api.consume) compare the balance with a
 *     copy of the enabled threshold that they get back from the UPDATE they already run, and
 *     call tokenbill.queue_auto_topup only on a crossing, like the low-balance alert (0018).
 *   - Three foreign keys on the ledger: one SPI query per row for user_id, a trigger event
 *     each for actor_id and payment_id. Their guarantee is kept by construction and guarded:
 *     every ledger row is written right after its user's row was updated in the same
 *     statement or transaction (no user row, no movement), admin_adjust checks the actor is an
 *     admin, the grant/clawback functions lock the payment row they name, ledger INSERT is the
 *     owner's alone, and users and payments can no longer be deleted or truncated (a trigger),
 *     so nothing a ledger row names can disappear. db/tests/ledger.sql checks there is no
 *     dangling reference.
 *   - api.consume: lock, replay lookup, then post_entry (two nested plpgsql calls with their
 *     own search_path) became one statement: the conditional UPDATE takes the row lock, the
 *     INSERT … ON CONFLICT DO NOTHING on ledger_consumption_once notices a request already
 *     charged (then the move is given back in the same transaction and the earlier answer
 *     replayed). It is the one writer besides post_entry, kept to that one statement; both are
 *     checked by the same audit and tests (tests/db/test_consume.py, test_hot_path.py).
 */

-- ============================================================================================
-- The ledger's row rules: one CHECK, one function
-- ============================================================================================
/** The ledger's row rules by kind: the sign of delta and what each kind must name. */
create function tokenbill.ledger_entry_is_valid(
    p_kind tokenbill.ledger_kind, p_delta integer, p_request_id text, p_payment_id bigint,
    p_actor_id uuid, p_reason text
) returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    case p_kind
        when 'consumption', 'reserve' then
            return p_delta < 0 and p_request_id is not null;
        when 'consumption_refund', 'release' then
            return p_delta > 0 and p_request_id is not null;
        when 'settle' then
            return p_delta >= 0 and p_request_id is not null;
        when 'purchase', 'clawback_reversal' then
            return p_delta > 0 and p_payment_id is not null;
        when 'clawback' then
            return p_delta < 0 and p_payment_id is not null;
        when 'admin_adjustment' then
            return p_delta <> 0 and p_actor_id is not null
                   and coalesce(length(btrim(p_reason)), 0) > 0;
        else
            return false;
    end case;
end
$$;
comment on function tokenbill.ledger_entry_is_valid(tokenbill.ledger_kind, integer, text, bigint, uuid, text) is
    'The ledger''s row rules (0020): debits negative, credits positive, a settle may be 0, an admin adjustment non-zero; request movements name their request, payment movements their payment, admin adjustments their admin and a reason.';

alter table tokenbill.ledger
    drop constraint ledger_delta_sign,
    drop constraint ledger_request_id_required,
    drop constraint ledger_payment_required,
    drop constraint ledger_admin_reason_required,
    add constraint ledger_entry_valid check (
        tokenbill.ledger_entry_is_valid(kind, delta, request_id, payment_id, actor_id, reason));
comment on constraint ledger_entry_valid on tokenbill.ledger is
    'All row rules in one CHECK (tokenbill.ledger_entry_is_valid): PostgreSQL re-reads every CHECK on every statement, so one small expression costs less than four.';

-- ============================================================================================
-- What a ledger row names cannot disappear (instead of three foreign keys on the hot table)
-- ============================================================================================
alter table tokenbill.ledger
    drop constraint ledger_user_id_fkey,
    drop constraint ledger_actor_id_fkey,
    drop constraint ledger_payment_id_fkey;

/** Rows that the ledger (or the chat record) names are history: they are never deleted. */
create function tokenbill.forbid_history_delete() returns trigger
language plpgsql set search_path = '' as $$
begin
    raise exception '% rows are never deleted: the ledger and the chat record name them (% refused)',
        tg_table_name, tg_op using errcode = 'TB001';
end
$$;
comment on function tokenbill.forbid_history_delete() is
    'Refuses DELETE and TRUNCATE of rows other tables name without a foreign key: users and payments (0020 replaced the ledger''s foreign keys with this guard), conversations (0021).';

create trigger users_never_deleted before delete on tokenbill.users
    for each row execute function tokenbill.forbid_history_delete();
create trigger users_never_truncated before truncate on tokenbill.users
    for each statement execute function tokenbill.forbid_history_delete();
create trigger payments_never_deleted before delete on tokenbill.payments
    for each row execute function tokenbill.forbid_history_delete();
create trigger payments_never_truncated before truncate on tokenbill.payments
    for each statement execute function tokenbill.forbid_history_delete();
comment on trigger users_never_deleted on tokenbill.users is 'Ledger rows name their user and actor: accounts are never deleted.';
comment on trigger users_never_truncated on tokenbill.users is 'Ledger rows name their user and actor: the table is never truncated.';
comment on trigger payments_never_deleted on tokenbill.payments is 'Purchase and clawback rows name their payment: payments are never deleted.';
comment on trigger payments_never_truncated on tokenbill.payments is 'Purchase and clawback rows name their payment: the table is never truncated.';

-- ============================================================================================
-- users: the profile rules fire when the profile is written, not on every balance move
-- ============================================================================================
/** users.email and users.low_balance_threshold rules, checked when either is written. */
create function tokenbill.check_user_profile() returns trigger
language plpgsql set search_path = '' as $$
begin
    if not (new.email = lower(btrim(new.email)) and new.email like '_%@_%') then
        raise exception 'new row for relation "users" violates check constraint "users_email_check"'
            using errcode = 'check_violation', constraint = 'users_email_check',
                  schema = 'tokenbill', table = 'users';
    end if;
    if new.low_balance_threshold not between 0 and 1000000 then
        raise exception 'new row for relation "users" violates check constraint "users_low_balance_threshold_check"'
            using errcode = 'check_violation', constraint = 'users_low_balance_threshold_check',
                  schema = 'tokenbill', table = 'users';
    end if;
    return new;
end
$$;
comment on function tokenbill.check_user_profile() is
    'The users CHECKs of 0002/0009 as a trigger on the profile columns only (0020): a CHECK runs on every balance UPDATE.';

alter table tokenbill.users
    drop constraint users_email_check,
    drop constraint users_low_balance_threshold_check;
create trigger users_profile_rules before insert or update of email, low_balance_threshold
    on tokenbill.users for each row execute function tokenbill.check_user_profile();
comment on trigger users_profile_rules on tokenbill.users is
    'Email lower-case and trimmed with an @, low-balance threshold 0 to 1,000,000: checked only when those columns are written.';

-- ============================================================================================
-- Auto top-up: checked by the writer on a crossing, not by a trigger on every debit
-- ============================================================================================
alter table tokenbill.users add column auto_topup_threshold integer;
comment on column tokenbill.users.auto_topup_threshold is
    'Copy of auto_topup_settings.threshold while auto top-up is enabled, else NULL; kept by a trigger on the settings so the balance UPDATE returns it (0020).';

/** Keep users.auto_topup_threshold equal to the enabled settings' threshold. */
create function tokenbill.copy_auto_topup_threshold() returns trigger
language plpgsql set search_path = '' as $$
begin
    update tokenbill.users u
       set auto_topup_threshold = case when new.enabled then new.threshold end
     where u.id = new.user_id
       and u.auto_topup_threshold is distinct from case when new.enabled then new.threshold end;
    return null;
end
$$;
comment on function tokenbill.copy_auto_topup_threshold() is
    'Copies the enabled auto top-up threshold onto the user row the balance writers already update.';
create trigger auto_topup_settings_copy_threshold
    after insert or update of enabled, threshold on tokenbill.auto_topup_settings
    for each row execute function tokenbill.copy_auto_topup_threshold();
comment on trigger auto_topup_settings_copy_threshold on tokenbill.auto_topup_settings is
    'users.auto_topup_threshold follows enabled and threshold.';

update tokenbill.users u set auto_topup_threshold = s.threshold
  from tokenbill.auto_topup_settings s where s.user_id = u.id and s.enabled;

drop trigger ledger_auto_topup on tokenbill.ledger;
drop function tokenbill.queue_auto_topup();

/**
 * Queue one top-up for this crossing unless one is in flight or it would take the month's
 * pending + succeeded top-ups over the cap. The caller holds the user's row lock (it just
 * moved the balance), which serialises every crossing, settings change and cap check of
 * this account.
 */
create function tokenbill.queue_auto_topup(p_user_id uuid, p_ledger_id bigint,
                                           p_balance integer, p_delta integer)
returns void
language plpgsql set search_path = '' as $$
declare
    v_set tokenbill.auto_topup_settings;
    v_pkg tokenbill.packages;
    v_month date := tokenbill.topup_month(now());
    v_committed bigint;
begin
    select * into v_set from tokenbill.auto_topup_settings s
     where s.user_id = p_user_id and s.enabled;
    if not found
       or not (p_balance < v_set.threshold and p_balance - p_delta >= v_set.threshold) then
        return;
    end if;
    select * into v_pkg from tokenbill.packages k where k.code = v_set.package_code and k.active;
    if not found then
        return;
    end if;
    if exists (select from tokenbill.auto_topups t
                where t.user_id = p_user_id
                  and t.status in ('pending', 'processing', 'requires_action')) then
        return;
    end if;
    select coalesce(sum(t.amount_cents), 0) into v_committed
      from tokenbill.auto_topups t
     where t.user_id = p_user_id and t.month = v_month
       and t.status in ('pending', 'processing', 'requires_action', 'succeeded');
    if v_committed + v_pkg.amount_cents > v_set.monthly_cap_cents then
        return;
    end if;
    insert into tokenbill.auto_topups
           (user_id, ledger_id, package_code, amount_cents, currency, month, idempotency_key)
    values (p_user_id, p_ledger_id, v_pkg.code, v_pkg.amount_cents, v_pkg.currency, v_month,
            'tokenbill-topup-' || p_user_id || '-' || p_ledger_id);
end
$$;
comment on function tokenbill.queue_auto_topup(uuid, bigint, integer, integer) is
    'Queue one auto top-up for a debit that crossed the threshold, within the monthly cap; called by the balance writers under the user''s row lock.';

/** What a debit that crossed a threshold sets off: the low-balance alert and the top-up. */
create function tokenbill.debit_crossed(p_user_id uuid, p_ledger_id bigint, p_balance integer,
                                        p_delta integer, p_alert_threshold integer,
                                        p_topup_threshold integer)
returns void
language plpgsql set search_path = '' as $$
begin
    if p_balance < p_alert_threshold and p_balance - p_delta >= p_alert_threshold then
        insert into tokenbill.low_balance_alerts (user_id, ledger_id, threshold, balance)
        values (p_user_id, p_ledger_id, p_alert_threshold, p_balance);
    end if;
    if p_balance < p_topup_threshold and p_balance - p_delta >= p_topup_threshold then
        perform tokenbill.queue_auto_topup(p_user_id, p_ledger_id, p_balance, p_delta);
    end if;
end
$$;
comment on function tokenbill.debit_crossed(uuid, bigint, integer, integer, integer, integer) is
    'Called by a balance writer only when a consumption or reserve crossed the low-balance or auto top-up threshold: records the alert, queues the top-up.';

-- ============================================================================================
-- The writers
-- ============================================================================================
/**
 * Move p_delta tokens for a user and append the ledger row, in one statement, so that
 * users.balance always equals the sum of the user's ledger deltas. Returns the new balance,
 * or NULL (and changes nothing) when the user does not exist or the balance would drop below
 * zero and p_allow_negative is false. A consumption or reserve that crosses the user's
 * low-balance or auto top-up threshold calls tokenbill.debit_crossed.
 */
create or replace function tokenbill.post_entry(
    p_user_id uuid,
    p_kind tokenbill.ledger_kind,
    p_delta integer,
    p_allow_negative boolean default false,
    p_request_id text default null,
    p_payment_id bigint default null,
    p_checkout_session_id text default null,
    p_payment_intent_id text default null,
    p_charge_id text default null,
    p_dispute_id text default null,
    p_stripe_event_id text default null,
    p_reason text default null,
    p_actor_id uuid default null
) returns integer
language plpgsql set search_path = '' as $$
declare
    v_balance integer;
    v_alert integer;
    v_topup integer;
    v_ledger_id bigint;
begin
    with moved as (
        update tokenbill.users u
           set balance = u.balance + p_delta
         where u.id = p_user_id
           and (p_allow_negative or u.balance + p_delta >= 0)
        returning u.balance, u.low_balance_threshold, u.auto_topup_threshold),
    entry as (
        insert into tokenbill.ledger (
            user_id, kind, delta, balance_after, request_id, payment_id, checkout_session_id,
            payment_intent_id, charge_id, dispute_id, stripe_event_id, reason, actor_id)
        select p_user_id, p_kind, p_delta, m.balance, p_request_id, p_payment_id,
               p_checkout_session_id, p_payment_intent_id, p_charge_id, p_dispute_id,
               p_stripe_event_id, p_reason, p_actor_id
          from moved m
        returning id)
    select m.balance, m.low_balance_threshold, m.auto_topup_threshold, e.id
      into v_balance, v_alert, v_topup, v_ledger_id
      from moved m, entry e;
    if not found then
        return null;
    end if;
    if p_delta < 0 and p_kind in ('consumption', 'reserve')
       and v_balance - p_delta >= least(v_alert, coalesce(v_topup, v_alert))
       and v_balance < greatest(v_alert, coalesce(v_topup, v_alert)) then
        perform tokenbill.debit_crossed(p_user_id, v_ledger_id, v_balance, p_delta, v_alert,
                                        v_topup);
    end if;
    return v_balance;
end
$$;
comment on function tokenbill.post_entry(uuid,tokenbill.ledger_kind,integer,boolean,text,bigint,text,text,text,text,text,text,uuid) is
    'The balance writer: moves p_delta and appends the ledger row in one statement. NULL (nothing changed) for an unknown user or when it would overdraw without p_allow_negative. A consumption or reserve crossing the low-balance or auto top-up threshold calls debit_crossed.';

/**
 * Charge p_cost tokens once per (user, request id), atomically. Replaying a request id returns
 * the original result without charging again; a short balance charges nothing.
 * One statement in the common case: the conditional UPDATE takes the user's row lock and the
 * INSERT … ON CONFLICT DO NOTHING on ledger_consumption_once sees a charge of the same request
 * committed before that lock was granted (a unique check sees committed rows, not just the
 * statement's snapshot); the move is then given back and the earlier answer replayed.
 */
create or replace function api.consume(p_user_id uuid, p_request_id text, p_cost integer default 1)
returns table (ok boolean, balance integer, reason text)
language plpgsql security definer set search_path = '' as $$
declare
    v_balance integer;
    v_alert integer;
    v_topup integer;
    v_ledger_id bigint;
    v_previous integer;
begin
    if p_request_id is null or length(p_request_id) not between 1 and 200 then
        raise exception 'request id must be 1 to 200 characters' using errcode = 'TB003';
    end if;
    if p_cost is null or p_cost < 1 then
        raise exception 'cost must be a positive number of tokens' using errcode = 'TB003';
    end if;

    with moved as (
        update tokenbill.users u
           set balance = u.balance - p_cost
         where u.id = p_user_id and u.balance >= p_cost
        returning u.balance, u.low_balance_threshold, u.auto_topup_threshold),
    entry as (
        insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id)
        select p_user_id, 'consumption', -p_cost, m.balance, p_request_id from moved m
        on conflict (user_id, request_id) where kind = 'consumption' do nothing
        returning id)
    select m.balance, m.low_balance_threshold, m.auto_topup_threshold, e.id
      into v_balance, v_alert, v_topup, v_ledger_id
      from moved m left join entry e on true;

    if v_ledger_id is not null then
        if v_balance + p_cost >= least(v_alert, coalesce(v_topup, v_alert))
           and v_balance < greatest(v_alert, coalesce(v_topup, v_alert)) then
            perform tokenbill.debit_crossed(p_user_id, v_ledger_id, v_balance, -p_cost, v_alert,
                                            v_topup);
        end if;
        return query select true, v_balance, null::text;
        return;
    end if;

    if v_balance is not null then
        -- this request was charged already: give this move back (same transaction)
        update tokenbill.users u set balance = u.balance + p_cost where u.id = p_user_id;
    end if;
    select l.balance_after into v_previous
      from tokenbill.ledger l
     where l.user_id = p_user_id and l.request_id = p_request_id and l.kind = 'consumption';
    if found then
        return query select true, v_previous, 'replayed'::text;
        return;
    end if;
    select u.balance into v_balance from tokenbill.users u where u.id = p_user_id;
    if not found then
        raise exception 'unknown user %', p_user_id using errcode = 'TB002';
    end if;
    return query select false, v_balance, 'insufficient_tokens'::text;
end
$$;
comment on function api.consume(uuid, text, integer) is
    'Charge p_cost tokens once per (user, request id) in one statement: replays return the original balance, a short balance charges nothing (0020). Owner-only since 0013.';
