-- Commands over the queue (binding.resolve, user.unlink): one row per processed command, keyed
-- like logins by CloudEvents source and id, holding the reply a re-sent command gets again.
CREATE TABLE processed_commands (
    source       text        NOT NULL,
    command_id   text        NOT NULL,
    type         text        NOT NULL,
    reply        jsonb,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, command_id)
);
CREATE INDEX processed_commands_processed_at ON processed_commands (processed_at);

-- What a login of a linked identity does when the source now sends another email, phone or
-- username than the identity's last snapshot.
ALTER TABLE connections ADD COLUMN on_profile_change text NOT NULL DEFAULT 'notify'
    CHECK (on_profile_change IN ('ignore', 'notify', 'update_user'));
