-- The read side (ReadModelStore): projections' documents, their checkpoints and the leases of
-- projection worker groups. A commit writes documents and moves the checkpoint in one transaction,
-- so a crash between the two cannot happen. Keys compare as bytes (SQLite's BINARY collation), the
-- order `list` returns. Times are integers of microseconds since the Unix epoch (UTC).
CREATE TABLE IF NOT EXISTS read_models (
    projection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    PRIMARY KEY (projection, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection TEXT    PRIMARY KEY NOT NULL,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS projection_leases (
    projection TEXT    PRIMARY KEY NOT NULL,
    worker     TEXT    NOT NULL,
    until      INTEGER NOT NULL
);
