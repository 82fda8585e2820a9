-- Typed records: how a statement receives many rows of one table, as one array of a composite
-- type, sent in the binary protocol (each field in its own type, nothing to parse but the jsonb
-- values). The program encodes each record's fields in the order below (db::types::record!);
-- a field of another type in that place is refused by the server.

CREATE TYPE user_record AS (
  id uuid, user_pool_id text, email text, email_verified bool, phone text, phone_verified bool,
  username text, name text, protected bool, attributes jsonb);

CREATE TYPE identity_record AS (
  user_pool_id text, connection text, external_id text, user_id uuid, profile jsonb);

CREATE TYPE binding_record AS (
  id uuid, user_pool_id text, connection text, external_id text, profile jsonb, reason text,
  candidates uuid[], cause_event_id text, cause_source text, expires_at timestamptz);

CREATE TYPE processed_record AS (
  source text, event_id text, outcome text, user_id uuid, binding_id uuid, reason text,
  user_pool_id text, connection text, settings_version int8, evidence jsonb, external_id text,
  profile jsonb);

CREATE TYPE profile_update AS (
  id uuid, set_email bool, email text, email_verified bool, set_phone bool, phone text,
  phone_verified bool, set_username bool, username text);

CREATE TYPE outbox_record AS (
  kind text, routing_key text, message_id uuid, correlation_id text, payload jsonb, subject uuid);

-- The one way rows enter the outbox, for every writer: a batch of logins (inside its single
-- statement), a resolution, an expiry, an account changed through the API.
--
-- `p_rows` are the rows in the order they were made. They get ascending ids in that order, and
-- each event with a `subject` (a user or a binding) the next value of that subject's sequence, written into its
-- payload as `sequence` (20 digits, so that its text sorts as its number). Taking the next values
-- locks the subjects' rows until commit, in subject order (two writers cannot deadlock on them),
-- so a subject's sequence follows the order in which its events were committed. Every row starts
-- unpublished: its pending row goes when the broker has it. `created_at` is the database's clock
-- at insert: rows are adopted by other relays by age, which must not count the time the
-- transaction spent before writing them.
--
-- Returns [{id, sequence}] in id order (`sequence` null for a row without a subject).
--
-- PL/pgSQL rather than SQL: its statement's plan is kept for the session, where a SQL function
-- that cannot be inlined (this one writes) is planned again at every call, once per batch.
CREATE FUNCTION outbox_enqueue(p_origin uuid, p_rows outbox_record[]) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  stored jsonb;
BEGIN
  WITH r AS (
    SELECT * FROM unnest(p_rows) WITH ORDINALITY
                  AS x(kind, routing_key, message_id, correlation_id, payload, subject, n)),
  sequences AS (
    INSERT INTO event_sequences AS s (subject, last)
    SELECT r.subject, count(*) FROM r WHERE r.subject IS NOT NULL
    GROUP BY r.subject ORDER BY r.subject
    ON CONFLICT (subject) DO UPDATE SET last = s.last + EXCLUDED.last
    RETURNING s.subject, s.last),
  numbered AS (
    SELECT r.*, q.last - count(*) OVER (PARTITION BY r.subject)
                + row_number() OVER (PARTITION BY r.subject ORDER BY r.n) AS seq
    FROM r LEFT JOIN sequences q ON q.subject = r.subject),
  queued AS (
    INSERT INTO outbox AS o (origin, kind, routing_key, message_id, correlation_id, payload,
                             created_at)
    SELECT p_origin, nb.kind, nb.routing_key, nb.message_id, nb.correlation_id,
           CASE WHEN nb.seq IS NULL THEN nb.payload
                ELSE nb.payload || jsonb_build_object('sequence', lpad(nb.seq::text, 20, '0'))
           END,
           clock_timestamp()
    FROM numbered nb ORDER BY nb.n
    RETURNING o.id, o.created_at, o.payload->>'sequence' AS seq),
  pending AS (
    INSERT INTO outbox_pending (id, origin, created_at)
    SELECT qd.id, p_origin, qd.created_at FROM queued qd)
  SELECT coalesce(jsonb_agg(jsonb_build_object('id', qd.id, 'sequence', qd.seq)
                            ORDER BY qd.id), '[]')
  INTO stored
  FROM queued qd;
  RETURN stored;
END
$$;
