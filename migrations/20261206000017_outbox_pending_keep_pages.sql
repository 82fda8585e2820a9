-- The pending rows of a busy relay fill and empty the same pages over and over. Vacuum's cut of
-- the empty pages at the end of the table takes an exclusive lock that holds up every commit
-- inserting into it, for pages that are needed again a moment later: autovacuum keeps them, as
-- the relay's own vacuums do.
ALTER TABLE outbox_pending SET (vacuum_truncate = false);
