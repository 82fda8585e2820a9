-- The tables every login writes churn: outbox rows are marked published (or, for replies,
-- deleted) moments after they are written, and identities and event sequences are updated in
-- place. PostgreSQL's default autovacuum waits for dead rows to reach a fifth of a table, which
-- on a table of millions of rows is hours of bloat for the relay's scans of unpublished rows;
-- these tables are vacuumed after a small fixed number of dead rows instead, without throttling.
-- Room left in each page lets an update stay on its page (a HOT update, pruned without vacuum).
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE identities SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE event_sequences SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE relay_origins SET (fillfactor = 50);
