-- Account attributes (a JSON object of string values such as employee_id), the attributes a
-- pool's connections declare unique, and composite match rules.

ALTER TABLE users ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}';

-- Match fields may now name attributes (attributes.employee_id).
CREATE FUNCTION match_fields_valid(fields text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(bool_and(f ~ '^(email|phone|username|attributes\.[A-Za-z0-9_-]{1,64})$'), true)
    FROM unnest(fields) AS f $$;

ALTER TABLE connections
    DROP CONSTRAINT connections_match_fields_check,
    ADD CONSTRAINT connections_match_fields_check CHECK (match_fields_valid(match_fields)),
    ADD COLUMN match_rule        text   NOT NULL DEFAULT 'any' CHECK (match_rule IN ('any', 'all')),
    ADD COLUMN unique_attributes text[] NOT NULL DEFAULT '{}';

-- The attributes unique inside a pool: every name some connection of the pool lists in its
-- unique_attributes. Maintained by the program when connections are written.
CREATE TABLE unique_attributes (
    user_pool_id text NOT NULL,
    name         text NOT NULL,
    PRIMARY KEY (user_pool_id, name)
);

-- One row per attribute of an account: what lookups by attribute and uniqueness work on. Kept in
-- step with users.attributes by the trigger below, so no writer can forget it.
CREATE TABLE user_attributes (
    user_id      uuid    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_pool_id text    NOT NULL,
    name         text    NOT NULL,
    value        text    NOT NULL,
    is_unique    boolean NOT NULL,
    PRIMARY KEY (user_id, name)
);
CREATE INDEX user_attributes_lookup ON user_attributes (user_pool_id, name, value);
CREATE UNIQUE INDEX user_attributes_unique ON user_attributes (user_pool_id, name, value)
    WHERE is_unique;

-- The lock a writer of a pool's unique_attributes takes exclusively and a writer of its accounts'
-- attributes shares, so that a name turning unique and an account taking a value never cross.
CREATE FUNCTION unique_attributes_lock_key(pool text) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('unique_attributes' || chr(31) || pool, 0) $$;

CREATE FUNCTION sync_user_attributes() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(unique_attributes_lock_key(NEW.user_pool_id));
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM user_attributes WHERE user_id = NEW.id;
    END IF;
    INSERT INTO user_attributes (user_id, user_pool_id, name, value, is_unique)
    SELECT NEW.id, NEW.user_pool_id, a.key, a.value,
           EXISTS (SELECT 1 FROM unique_attributes u
                   WHERE u.user_pool_id = NEW.user_pool_id AND u.name = a.key)
    FROM jsonb_each_text(NEW.attributes) AS a;
    RETURN NULL;
END $$;

CREATE TRIGGER users_attributes_insert AFTER INSERT ON users
    FOR EACH ROW WHEN (NEW.attributes <> '{}'::jsonb) EXECUTE FUNCTION sync_user_attributes();
CREATE TRIGGER users_attributes_update AFTER UPDATE OF attributes ON users
    FOR EACH ROW WHEN (OLD.attributes IS DISTINCT FROM NEW.attributes)
    EXECUTE FUNCTION sync_user_attributes();

-- Connections stored before presets existed keep deciding as they did: "no default country
-- code" is now written explicitly (a preset's default applies only where none was written), and
-- a connection of a provider that now has a preset keeps its standard fields and vouches for
-- nothing until its settings are written again.
UPDATE connections SET default_country_code = '' WHERE default_country_code IS NULL;
UPDATE connections
   SET mapping = '{"email": "", "phone": "", "attributes.employee_id": ""}'
 WHERE provider IN ('dingtalk', 'wecom', 'feishu') AND mapping = '{}';

-- An account's attributes are an object of strings (what every reader expects).
CREATE FUNCTION attributes_valid(attributes jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_typeof(attributes) = 'object'
       AND NOT EXISTS (SELECT 1 FROM jsonb_each(attributes) AS a
                       WHERE jsonb_typeof(a.value) <> 'string'
                          OR a.key !~ '^[A-Za-z0-9_-]{1,64}$') $$;
ALTER TABLE users ADD CONSTRAINT users_attributes_check CHECK (attributes_valid(attributes));
