-- A connection may ask its source's directory about people (DingTalk, WeCom, Feishu open APIs).
-- `directory` holds its settings as written, the secret as given (the text itself, or a
-- `${VARIABLE}` reference read from the worker's environment when used).
ALTER TABLE connections ADD COLUMN directory jsonb;

-- What a directory said about a person, kept for the connection's cache_ttl so that a returning
-- login, a restart or a second worker spends no call: the record, or none when the directory
-- does not know them. Keys are the login's own, so rows are replaced, never pruned on their own.
CREATE TABLE directory_records (
    user_pool_id text NOT NULL,
    connection text NOT NULL,
    external_id text NOT NULL,
    -- What it was asked of: the directory's kind, base, app and id field. A record asked of
    -- other settings is not used.
    asked text NOT NULL,
    record jsonb,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_pool_id, connection, external_id)
);
