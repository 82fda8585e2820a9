-- What each login carried, so that a change of a connection's settings can be previewed against
-- the logins it would meet (policy simulation): the identity's external id and the profile as
-- received. Logins decided before this version have neither and are not simulated. No index of
-- its own: a preview reads a window of logins by time (processed_events_by_time), which costs
-- the hot path nothing more.
ALTER TABLE processed_events
    ADD COLUMN external_id text,
    ADD COLUMN profile     jsonb;
