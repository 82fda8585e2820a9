-- Fewer writes per delivery: a delivery row is inserted in the login's own transaction, so every
-- index entry it carries is paid for by the login.
--
-- The delivery log is listed by `(endpoint_id, event_id)`, the unique index every delivery has
-- anyway (event ids are UUIDv7, so that is the order they were made in), instead of an index of
-- its own.
DROP INDEX webhook_deliveries_log;
-- Pruning events skips those with a pending delivery by reading the pending deliveries through
-- a partial index of pending ones (few, whatever the log's size), instead of an index of its own.
DROP INDEX webhook_deliveries_of_outbox;
-- Room on every page for the lease a claim writes, so that the update is a heap-only one (no new
-- index entries) rather than a copy indexed again everywhere.
ALTER TABLE webhook_deliveries SET (fillfactor = 70);
