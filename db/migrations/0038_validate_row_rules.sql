/*
 * 0038 — validate the row rules 0036 added NOT VALID, without stopping the writers.
 *
 * 0036 replaced exchanges_valid and ledger_entry_valid by CHECKs that pass the whole row, with
 * the same rules. Adding them NOT VALID kept ALTER TABLE's ACCESS EXCLUSIVE lock to an instant;
 * VALIDATE CONSTRAINT, in this migration's own transaction, scans the existing rows under a
 * SHARE UPDATE EXCLUSIVE lock, so charges, reservations and grants go on while it runs (only
 * other schema changes and VACUUM wait). A row that broke a rule would fail this migration
 * with 23514 and leave the constraint NOT VALID, still checking every new row.
 */
alter table tokenbill.exchanges validate constraint exchanges_valid;
alter table tokenbill.ledger validate constraint ledger_entry_valid;
