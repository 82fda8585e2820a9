-- Publication state moves out of the outbox into a narrow table of the rows still to publish.
-- An outbox row is then written once: marking it published deletes its small pending row instead
-- of writing a whole new version of the outbox row (payload included) and its index entries, and
-- the outbox, insert-only apart from replies and pruning, needs little vacuum.
CREATE TABLE outbox_pending (
    id bigint PRIMARY KEY,
    -- Copied from the outbox row, so that claims read this table alone to choose.
    origin uuid NOT NULL,
    created_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz
);

INSERT INTO outbox_pending (id, origin, created_at, attempts, next_attempt_at)
SELECT id, origin, created_at, attempts, next_attempt_at
FROM outbox WHERE published_at IS NULL;

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at, DROP COLUMN attempts, DROP COLUMN next_attempt_at;

-- Every published row leaves a dead row here: vacuumed after a few thousand, unthrottled.
ALTER TABLE outbox_pending SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
