-- Association you can trust: protected accounts, per-connection safety settings with a version
-- that changes with them, the new binding reasons, and the evidence of every decision.

ALTER TABLE users ADD COLUMN protected boolean NOT NULL DEFAULT false;

ALTER TABLE connections
    ADD COLUMN trust_unverified_accounts boolean NOT NULL DEFAULT false,
    ADD COLUMN allowed_email_domains     text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN settings_version          bigint  NOT NULL DEFAULT 1;

-- Every version of every connection's settings, as the admin API shows them: a decision names
-- the version it was taken under, and its evidence shows these settings.
CREATE TABLE connection_versions (
    user_pool_id text        NOT NULL,
    identifier   text        NOT NULL,
    version      bigint      NOT NULL,
    settings     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_pool_id, identifier, version)
);
INSERT INTO connection_versions (user_pool_id, identifier, version, settings)
SELECT user_pool_id, identifier, 1, jsonb_build_object(
           'user_pool_id', user_pool_id, 'identifier', identifier,
           'display_name', display_name, 'provider', provider, 'login_mode', login_mode,
           'association', association, 'match_fields', to_jsonb(match_fields),
           'require_verified', require_verified, 'default_country_code', default_country_code,
           'binding_ttl', binding_ttl_seconds || 's', 'trust_unverified_accounts', false,
           'allowed_email_domains', '[]'::jsonb, 'settings_version', 1)
FROM connections;

ALTER TABLE bindings DROP CONSTRAINT bindings_reason_check;
ALTER TABLE bindings ADD CONSTRAINT bindings_reason_check CHECK (reason IN (
    'ask_binding', 'ambiguous_match', 'candidate_already_linked', 'protected_account',
    'confusable_identifier', 'candidate_unverified'));

-- The decision's context and evidence (fields with why-not, candidates with why set aside).
ALTER TABLE processed_events
    ADD COLUMN user_pool_id     text,
    ADD COLUMN connection       text,
    ADD COLUMN settings_version bigint,
    ADD COLUMN evidence         jsonb;
