-- Batch lookups select by the most selective column with `= ANY($1)`: an index scan on a large
-- table, a hashed filter on a small one, whatever the planner's statistics say (freshly created
-- tables have none). The unique keys are reordered so that this column leads their index.

ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey;
ALTER TABLE processed_events ADD CONSTRAINT processed_events_pkey PRIMARY KEY (event_id, source);

ALTER TABLE identities DROP CONSTRAINT identities_pkey;
ALTER TABLE identities ADD CONSTRAINT identities_pkey PRIMARY KEY (external_id, connection, user_pool_id);

DROP INDEX bindings_one_pending_per_identity;
CREATE UNIQUE INDEX bindings_one_pending_per_identity
    ON bindings (external_id, connection, user_pool_id) WHERE status = 'pending';
DROP INDEX bindings_by_identity;
CREATE INDEX bindings_by_identity ON bindings (external_id, connection, user_pool_id);

ALTER TABLE users DROP CONSTRAINT users_email_key;
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email, user_pool_id);
ALTER TABLE users DROP CONSTRAINT users_phone_key;
ALTER TABLE users ADD CONSTRAINT users_phone_key UNIQUE (phone, user_pool_id);
ALTER TABLE users DROP CONSTRAINT users_username_key;
ALTER TABLE users ADD CONSTRAINT users_username_key UNIQUE (username, user_pool_id);
