-- composable-rust event store schema. Applied by PostgresEventStore::migrate().
CREATE SCHEMA IF NOT EXISTS composable_rust;

-- One row per stream with its version. An append updates this row, which serialises the writers of
-- one stream and makes the expected-version check atomic.
CREATE TABLE composable_rust.streams (
    stream_id TEXT PRIMARY KEY,
    version   BIGINT NOT NULL CHECK (version >= 0)
);

CREATE TABLE composable_rust.events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL CHECK (stream_version >= 1),
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER,
    payload         BYTEA       NOT NULL,
    metadata        JSONB       NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE TABLE composable_rust.snapshots (
    stream_id TEXT PRIMARY KEY,
    version   BIGINT      NOT NULL,
    state     BYTEA       NOT NULL,
    taken_at  TIMESTAMPTZ NOT NULL
);

-- Transactional outbox: publish intents committed with their events.
CREATE TABLE composable_rust.outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     UUID        NOT NULL REFERENCES composable_rust.events (event_id),
    topic        TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    CONSTRAINT outbox_event_topic_key UNIQUE (event_id, topic)
);
CREATE INDEX outbox_pending ON composable_rust.outbox (id) WHERE published_at IS NULL;
