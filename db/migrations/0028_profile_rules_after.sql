/*
 * 0028 — the users' profile rules run AFTER the row is written (issue 16: the balance write).
 *
 * 0020 turned the users' CHECKs into the row trigger users_profile_rules, BEFORE INSERT OR
 * UPDATE OF email, low_balance_threshold. A BEFORE UPDATE row trigger makes PostgreSQL lock
 * the row before every UPDATE of the table, whatever columns it sets (the column list is
 * checked after the lock): every balance write — consume, a reservation, a grant — wrote a
 * tuple-lock WAL record before its update, and under one hot account each waiter's lock went
 * through EvalPlanQual, which recomputes the statement's InitPlans (in the agent reservation:
 * the conversation-owner EXISTS, an index scan). The rules only validate (they never change
 * the row), so they run AFTER: same rules, same SQLSTATE 23514 and constraint names, the
 * statement still fails, and an UPDATE that sets neither column queues nothing.
 */
drop trigger users_profile_rules on tokenbill.users;
create trigger users_profile_rules after insert or update of email, low_balance_threshold
    on tokenbill.users
    for each row execute function tokenbill.check_user_profile();

comment on trigger users_profile_rules on tokenbill.users is
    'The email and low-balance-threshold rules (0020), checked after the row is written (0028): '
    'a BEFORE UPDATE row trigger would lock the row before every balance write.';
