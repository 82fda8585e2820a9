-- Core schema: connections, users and their external identities, pending bindings, the dedupe
-- record of processed login events, and the outbox of events and replies to publish.

CREATE TABLE connections (
    user_pool_id         text        NOT NULL,
    identifier           text        NOT NULL CHECK (identifier ~ '^[a-z0-9-]{1,31}$'),
    display_name         text        NOT NULL,
    provider             text        NOT NULL DEFAULT '',
    login_mode           text        NOT NULL CHECK (login_mode IN ('normal', 'login_only')),
    association          text        NOT NULL CHECK (association IN ('disabled', 'field_matching', 'ask_binding')),
    match_fields         text[]      NOT NULL CHECK (match_fields <@ ARRAY['email', 'phone', 'username']),
    require_verified     boolean     NOT NULL,
    default_country_code text,
    binding_ttl_seconds  bigint      NOT NULL CHECK (binding_ttl_seconds > 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_pool_id, identifier)
);

-- email, phone and username hold normalised values and are unique inside a pool.
CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    user_pool_id   text        NOT NULL,
    email          text,
    email_verified boolean     NOT NULL DEFAULT false,
    phone          text,
    phone_verified boolean     NOT NULL DEFAULT false,
    username       text,
    name           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key    UNIQUE (user_pool_id, email),
    CONSTRAINT users_phone_key    UNIQUE (user_pool_id, phone),
    CONSTRAINT users_username_key UNIQUE (user_pool_id, username)
);

-- An external identity linked to a user. A user holds at most one identity per connection.
CREATE TABLE identities (
    user_pool_id  text        NOT NULL,
    connection    text        NOT NULL,
    external_id   text        NOT NULL,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    profile       jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_pool_id, connection, external_id),
    CONSTRAINT identities_one_per_connection UNIQUE (user_id, connection)
);

CREATE TABLE bindings (
    id             uuid        PRIMARY KEY,
    user_pool_id   text        NOT NULL,
    connection     text        NOT NULL,
    external_id    text        NOT NULL,
    profile        jsonb       NOT NULL DEFAULT '{}',
    reason         text        NOT NULL CHECK (reason IN ('ask_binding', 'ambiguous_match', 'candidate_already_linked')),
    candidates     uuid[]      NOT NULL,
    status         text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'resolved', 'expired')),
    cause_event_id text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    resolution     text        CHECK (resolution IN ('linked', 'created', 'rejected')),
    user_id        uuid,
    resolved_by    text,
    resolved_at    timestamptz,
    CHECK ((status = 'resolved') = (resolution IS NOT NULL))
);
CREATE UNIQUE INDEX bindings_one_pending_per_identity
    ON bindings (user_pool_id, connection, external_id) WHERE status = 'pending';
CREATE INDEX bindings_pending_by_expiry ON bindings (expires_at) WHERE status = 'pending';
CREATE INDEX bindings_newest_first ON bindings (created_at DESC, id DESC);

-- One row per login event ever decided (CloudEvents source + id): the dedupe record, holding the
-- decision so that a redelivered or re-sent event is answered exactly as the first time.
CREATE TABLE processed_events (
    source       text        NOT NULL,
    event_id     text        NOT NULL,
    outcome      text        NOT NULL,
    user_id      uuid,
    binding_id   uuid,
    reason       text,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);
CREATE INDEX processed_events_by_time ON processed_events (processed_at);

-- Outbound events and replies, written in the transaction that decided them and published by the
-- relay. `origin` is the process that wrote the row: each relay publishes its own rows in commit
-- order and adopts the rows of processes that stopped without publishing theirs.
CREATE TABLE outbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin         uuid        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('event', 'reply')),
    -- event type for events, the reply_to queue for replies
    routing_key    text        NOT NULL,
    message_id     uuid        NOT NULL,
    correlation_id text,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    -- the broker accepted the event but no queue was bound for its type
    unrouted       boolean     NOT NULL DEFAULT false
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_events_by_time ON outbox (created_at) WHERE kind = 'event';
