/*
 * 0036 — the row rules of the hot tables take the row, not its columns (issue 16).
 *
 * PostgreSQL keeps a CHECK as the text of its expression and reads it again for every
 * statement that writes the table: stringToNode, then planning, then executor set-up, before
 * the first row is checked. Callgrind on one agent request (1.43 M instructions) put the
 * CHECKs at about a fifth of it: exchanges_valid alone ≈ 110,000 instructions each time it ran
 * (once in the reservation, once in the settle), most of it reading the eleven column
 * references of its call and, in tokenbill.exchange_is_valid, rebuilding one large expression
 * that plpgsql prepares afresh in every transaction.
 *
 *   - exchanges_valid and ledger_entry_valid now pass the whole row (one Var) to a function of
 *     the table's row type; the exchange rules are one IF chain by hold status, so a
 *     transaction prepares only the branch its row takes. Same rules, same constraint names, same 23514.
 *   - conversations' title rule (a CHECK read again on every request that continues a
 *     conversation, which only touches updated_at) becomes a row trigger AFTER INSERT OR
 *     UPDATE OF title, as 0020/0028 did for the users' profile rules: same SQLSTATE and
 *     constraint name in the error, and an UPDATE that does not set the title runs nothing.
 *
 * Effect (callgrind, every count from one warmed-up copy at 0035 and at 0036): an agent request
 * continuing a conversation 1,431,000 → 1,296,000 instructions (−9 %), one starting a
 * conversation 1,442,000 → 1,334,000, api.consume 426,000 → 411,000.
 *
 * Both CHECKs are added NOT VALID: the rows already met the same rules under the constraints
 * they replace, and checking the whole ledger here would hold ALTER TABLE's ACCESS EXCLUSIVE
 * lock (every charge waits) for as long as the scan takes. 0038 validates them in its own
 * transaction, under a lock that lets writes go on. New rows are checked from now on.
 *
 * The price of passing the row: PostgreSQL builds it with every out-of-line (TOASTed) value
 * fetched, so an UPDATE of an exchange whose prompt was stored out of line (more than ≈ 2 kB
 * after compression) reads that prompt back for the check: a request with a 19,200-character
 * prompt that does not compress costs 5,357,000 instructions instead of 5,339,000 (+0.3 %;
 * writing the prompt to TOAST is most of it).
 */

-- ============================================================================================
-- exchanges
-- ============================================================================================
create function tokenbill.exchange_row_is_valid(e tokenbill.exchanges) returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    if not coalesce(length(e.request_id) between 1 and 200 and e.cost > 0
                    and e.input_chars >= 0 and e.delivered_parts >= 0
                    and e.delivered_chars >= 0, false) then
        return false;
    elsif e.hold_status = 'held' then
        return coalesce(e.settled_at is null and e.charged is null and e.reply_status = 'pending'
                        and e.reserved > 0 and length(e.request_hash) between 1 and 200, false);
    elsif e.hold_status in ('settled', 'released') then
        return coalesce(e.settled_at is not null
                        and e.charged between 0 and case e.hold_status when 'settled' then e.reserved
                                                                       else 0 end
                        and e.reply_status in ('pending', 'done', 'partial', 'failed', 'timeout')
                        and e.reserved > 0 and length(e.request_hash) between 1 and 200, false);
    elsif e.hold_status is null then  -- a request from before 0014: no hold, never pending
        return coalesce(e.reserved is null and e.charged is null
                        and e.reply_status in ('done', 'partial', 'failed', 'timeout'), false);
    end if;
    return false;
end
$$;
revoke all on function tokenbill.exchange_row_is_valid(tokenbill.exchanges) from public;
comment on function tokenbill.exchange_row_is_valid(tokenbill.exchanges) is
    'Every rule of an exchange row (its one CHECK, 0036), by hold status: false, never null, '
    'for a broken row. The rules of tokenbill.exchange_is_valid (0023), which it replaces.';

alter table tokenbill.exchanges
    drop constraint exchanges_valid,
    add constraint exchanges_valid check (tokenbill.exchange_row_is_valid(exchanges)) not valid;
comment on constraint exchanges_valid on tokenbill.exchanges is
    'Every rule of an exchange row, in tokenbill.exchange_row_is_valid; it passes the row '
    '(one Var to read per statement, not eleven).';

drop function tokenbill.exchange_is_valid(text, text, integer, text, integer, text, integer,
                                          integer, integer, timestamptz, integer);

-- ============================================================================================
-- ledger
-- ============================================================================================
create function tokenbill.ledger_row_is_valid(l tokenbill.ledger) returns boolean
language plpgsql immutable set search_path = '' as $$
begin
    case l.kind
        when 'consumption', 'reserve' then
            return l.delta < 0 and l.request_id is not null;
        when 'consumption_refund', 'release' then
            return l.delta > 0 and l.request_id is not null;
        when 'settle' then
            return l.delta >= 0 and l.request_id is not null;
        when 'purchase', 'clawback_reversal' then
            return l.delta > 0 and l.payment_id is not null;
        when 'clawback' then
            return l.delta < 0 and l.payment_id is not null;
        when 'admin_adjustment' then
            return l.delta <> 0 and l.actor_id is not null
                   and coalesce(length(btrim(l.reason)), 0) > 0;
        else
            return false;
    end case;
end
$$;
revoke all on function tokenbill.ledger_row_is_valid(tokenbill.ledger) from public;
comment on function tokenbill.ledger_row_is_valid(tokenbill.ledger) is
    'The ledger''s row rules by kind (its one CHECK, 0036; the rules of 0020''s '
    'ledger_entry_is_valid): debits negative, credits positive, a settle may be 0, an admin '
    'adjustment non-zero; request movements name their request, payment movements their '
    'payment, admin adjustments their admin and a reason. False, never null, for a broken row.';

alter table tokenbill.ledger
    drop constraint ledger_entry_valid,
    add constraint ledger_entry_valid check (tokenbill.ledger_row_is_valid(ledger)) not valid;
comment on constraint ledger_entry_valid on tokenbill.ledger is
    'All row rules in one CHECK (tokenbill.ledger_row_is_valid): PostgreSQL re-reads every '
    'CHECK on every statement, so one call of one Var costs less than four expressions (0020) '
    'or one call of six columns (0036).';

drop function tokenbill.ledger_entry_is_valid(tokenbill.ledger_kind, integer, text, bigint, uuid,
                                              text);

-- ============================================================================================
-- conversations
-- ============================================================================================
create function tokenbill.check_conversation_title() returns trigger
language plpgsql set search_path = '' as $$
begin
    if not coalesce(length(new.title) between 1 and 200, false) then
        raise exception 'new row for relation "conversations" violates check constraint "conversations_title_check"'
            using errcode = 'check_violation', constraint = 'conversations_title_check',
                  schema = 'tokenbill', table = 'conversations';
    end if;
    return null;
end
$$;
revoke all on function tokenbill.check_conversation_title() from public;
comment on function tokenbill.check_conversation_title() is
    'A conversation''s title is 1 to 200 characters (0007''s CHECK, a trigger since 0036): '
    'raises 23514 naming conversations_title_check, as the CHECK did.';

alter table tokenbill.conversations drop constraint conversations_title_check;
create trigger conversations_title_rule after insert or update of title
    on tokenbill.conversations
    for each row execute function tokenbill.check_conversation_title();
comment on trigger conversations_title_rule on tokenbill.conversations is
    'The title rule (0036): checked only when a title is written; a request continuing a '
    'conversation touches updated_at alone, and a CHECK would be read again for it.';
