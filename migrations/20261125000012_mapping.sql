-- Profile mapping: account fields built from a source's own profile by a template, and the
-- mapped fields the source vouches for.
ALTER TABLE connections
    ADD COLUMN mapping         jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN verified_fields text[] NOT NULL DEFAULT '{}';
