-- What each login carried, so that a change of a connection's settings can be previewed against
-- the logins it would meet (policy simulation): the identity's external id and the profile as
-- received. Logins decided before this version have neither and are not simulated.
ALTER TABLE processed_events
    ADD COLUMN external_id text,
    ADD COLUMN profile     jsonb;

-- The simulation reads one connection's logins of a window, newest per identity.
CREATE INDEX processed_events_by_connection
    ON processed_events (user_pool_id, connection, processed_at);
