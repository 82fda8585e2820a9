-- Webhooks: events delivered over HTTP to subscribed endpoints (contract section 12).

CREATE TABLE webhook_endpoints (
    id            uuid        PRIMARY KEY,
    user_pool_id  text        NOT NULL,
    url           text        NOT NULL,
    -- Routing-key patterns as given (`user.*`, `binding.#`), and the one POSIX regular expression
    -- they make, matched against '.' || the event's type (see `outbox_enqueue`).
    event_types   text[]      NOT NULL,
    type_regex    text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    enabled       boolean     NOT NULL DEFAULT true,
    -- Why it was disabled: `gone` (410), `failing` (webhooks.disable_after) or `admin`.
    disabled_reason text,
    -- The signing secrets, `whsec_` + base64. The previous one signs beside the current one until
    -- `previous_secret_until` (webhooks.rotation_overlap after a rotation).
    secret                text        NOT NULL,
    previous_secret       text,
    previous_secret_until timestamptz,
    -- Since when every attempt has failed (null after a success).
    failing_since timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_pool ON webhook_endpoints (user_pool_id) WHERE enabled;

-- One event to one endpoint. `outbox_id` orders the deliveries of one subject to one endpoint
-- (`order_key`: the endpoint's id, a space and the event's CloudEvents `subject`): ids follow
-- the subject's sequence (see `outbox_enqueue`). The endpoint is part of the key so that the
-- head test of a claim reads the heads index by the key alone: no other index can answer it, so
-- no stale statistics can send it through an endpoint's every pending delivery.
CREATE TABLE webhook_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    outbox_id       bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    subject         text        NOT NULL,
    order_key       text        NOT NULL,
    -- `pending` (to send, or being sent while `lease_until` is ahead), `delivered`, `failed`
    -- (every attempt of the schedule failed).
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_status     integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
-- Claims read an endpoint's due deliveries in this order and stop at their limit.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_heads ON webhook_deliveries (order_key, outbox_id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_of_outbox ON webhook_deliveries (outbox_id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_settled ON webhook_deliveries (updated_at)
    WHERE state <> 'pending';
-- Every delivery is inserted, updated once or a few times and pruned: vacuumed and analysed
-- early, as outbox_pending is, so that its partial indexes do not fill with dead entries.
ALTER TABLE webhook_deliveries SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.02
);

-- The delivery log: every attempt, with what the receiver answered.
CREATE TABLE webhook_attempts (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    -- The HTTP status; null when no answer came (refused address, connection error, timeout).
    status      integer,
    latency_ms  integer     NOT NULL,
    -- The first bytes of the answer's body, or why there was no answer.
    response    text        NOT NULL DEFAULT '',
    error       text
);
CREATE INDEX webhook_attempts_of_delivery ON webhook_attempts (delivery_id, id);

-- `outbox_enqueue` as before, and every event also becomes a delivery to each enabled endpoint of
-- its pool whose patterns match its type (in the same statement, so in the same transaction: a
-- delivery exists exactly when its event was committed). An event about an endpoint
-- (`webhook.*`, subject the endpoint's id) is not delivered to that endpoint.
CREATE OR REPLACE FUNCTION outbox_enqueue(p_origin uuid, p_rows outbox_record[]) RETURNS jsonb
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
    RETURNING o.id, o.created_at, o.kind, o.routing_key, o.message_id,
              o.payload->>'sequence' AS seq, o.payload->>'subject' AS subject,
              o.payload->'data'->>'user_pool_id' AS user_pool_id),
  pending AS (
    INSERT INTO outbox_pending (id, origin, created_at)
    SELECT qd.id, p_origin, qd.created_at FROM queued qd),
  deliveries AS (
    INSERT INTO webhook_deliveries (endpoint_id, outbox_id, event_id, event_type, subject,
                                    order_key)
    SELECT e.id, qd.id, qd.message_id, qd.routing_key, coalesce(qd.subject, ''),
           e.id::text || ' ' || coalesce(qd.subject, qd.message_id::text)
    FROM queued qd
    JOIN webhook_endpoints e ON e.user_pool_id = qd.user_pool_id AND e.enabled
    WHERE qd.kind = 'event'
      AND ('.' || qd.routing_key) ~ e.type_regex
      AND NOT (qd.routing_key LIKE 'webhook.%' AND qd.subject = e.id::text)
    ORDER BY qd.id)
  SELECT coalesce(jsonb_agg(jsonb_build_object('id', qd.id, 'sequence', qd.seq)
                            ORDER BY qd.id), '[]')
  INTO stored
  FROM queued qd;
  RETURN stored;
END
$$;
