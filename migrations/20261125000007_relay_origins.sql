-- Relays that are alive: each process writes its origin here every `outbox.poll_interval` and
-- removes it when it stops. Unpublished rows are adopted by another relay only when their
-- origin has not been seen for `outbox.orphan_after`: a process whose broker connection is down
-- keeps its rows (and their order) for itself.
CREATE TABLE relay_origins (
    origin  uuid        PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
