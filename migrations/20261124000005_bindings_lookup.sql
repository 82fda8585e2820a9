-- A login looks its pending binding up by external id. With an index on the expiry of pending
-- bindings beside it, a planner whose statistics say "few pending bindings" (a young table)
-- chooses that index and scans every pending binding for each batch. The expiry sweeper, which
-- runs every few seconds, reads the pending bindings through the per-identity partial index
-- just as well.
DROP INDEX bindings_pending_by_expiry;
