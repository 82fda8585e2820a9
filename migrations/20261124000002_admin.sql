-- Admin side: why a binding was rejected, and the audit log of every admin write.

ALTER TABLE bindings ADD COLUMN resolution_reason text;
CREATE INDEX bindings_by_identity ON bindings (user_pool_id, connection, external_id);

CREATE TABLE audit_log (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor  text        NOT NULL,
    action text        NOT NULL,
    target text        NOT NULL,
    before jsonb,
    after  jsonb,
    at     timestamptz NOT NULL DEFAULT now()
);
