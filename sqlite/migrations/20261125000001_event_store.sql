-- composable-rust event store schema (SQLite). Applied by SqliteEventStore::open.
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY NOT NULL,
    version   INTEGER NOT NULL CHECK (version >= 0)
);

-- One writer connection appends, so AUTOINCREMENT positions follow commit order: readers of the
-- global log never skip an event that commits late.
CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 1),
    event_id        BLOB    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (stream_id, stream_version)
);

CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT PRIMARY KEY NOT NULL,
    version   INTEGER NOT NULL,
    state     BLOB    NOT NULL,
    taken_at  TEXT    NOT NULL
);

-- Transactional outbox: publish intents committed with their events.
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     BLOB NOT NULL REFERENCES events (event_id),
    topic        TEXT NOT NULL,
    published_at TEXT,
    UNIQUE (event_id, topic)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_at IS NULL;
