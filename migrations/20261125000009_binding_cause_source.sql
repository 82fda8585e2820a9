-- The CloudEvents source of the login that opened a binding: with `cause_event_id` it names that
-- login's decision (several sources may use one event id).
ALTER TABLE bindings ADD COLUMN cause_source text;
