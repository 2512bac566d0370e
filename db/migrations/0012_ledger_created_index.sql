/*
 * 0012 — reorder the ledger's reporting index.
 *
 * 0010's (kind, created_at) index tempted the planner, on a young database whose statistics
 * held no consumption rows yet, to answer api.consume's "was this request id charged?" lookup
 * by scanning every consumption instead of using ledger_consumption_once; throughput fell
 * round by round until autovacuum re-analysed (docs/performance.md). Leading with created_at
 * serves api.daily_stats' date-range scans and offers nothing to that lookup.
 */

drop index tokenbill.ledger_kind_created_idx;
create index ledger_created_kind_idx on tokenbill.ledger (created_at, kind);
