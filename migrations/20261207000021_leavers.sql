-- Leavers and movers: the source says a person left, re-joined or was renamed.

-- What a removal does on this connection, and the guard against removing too many at once
-- (NULL: the defaults, 10% of the connection's identities and at least 20 within one hour).
ALTER TABLE connections
    ADD COLUMN on_source_removal text NOT NULL DEFAULT 'notify'
        CHECK (on_source_removal IN ('notify', 'unlink', 'suspend')),
    ADD COLUMN removal_guard jsonb;

-- A suspended account is never linked to and never logged into. `suspension` says where it came
-- from: {"reason", "connection", "external_id", "source", "event_id"} for a source's removal, so
-- that the same source's restore reactivates it, and no other's.
ALTER TABLE users
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN suspension jsonb,
    ADD CONSTRAINT users_suspension_check CHECK ((suspended_at IS NULL) = (suspension IS NULL));

-- Removals applied, counted by the guard over its window; kept a day at least (retention).
CREATE TABLE source_removals (
    user_pool_id text NOT NULL,
    connection text NOT NULL,
    external_id text NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX source_removals_window ON source_removals (user_pool_id, connection, removed_at);

-- Removals the guard held for an admin: one per identity (a second removal of it is the same
-- request), applied or discarded by an admin.
CREATE TABLE held_removals (
    user_pool_id text NOT NULL,
    connection text NOT NULL,
    external_id text NOT NULL,
    source text NOT NULL,
    event_id text NOT NULL,
    source_event text,
    occurred_at timestamptz,
    held_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_pool_id, connection, external_id)
);
