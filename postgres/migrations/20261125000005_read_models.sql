-- The read side (ReadModelStore): projections' documents, their checkpoints and the leases of
-- projection worker groups. A commit writes documents and moves the checkpoint in one statement (one
-- transaction), only if the checkpoint row still holds the position the caller read. Keys use the
-- "C" collation: they sort as bytes (the order `list` returns, whatever the database's locale), and
-- a prefix is the index range `key >= prefix AND key < successor`.
CREATE TABLE composable_rust.read_models (
    projection TEXT             NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    value      BYTEA            NOT NULL,
    CONSTRAINT read_models_pkey PRIMARY KEY (projection, key)
);

CREATE TABLE composable_rust.projection_checkpoints (
    projection TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL CHECK (position >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Times are the callers' (never the server's clock), as for deadlines.
CREATE TABLE composable_rust.projection_leases (
    projection TEXT        PRIMARY KEY,
    worker     TEXT        NOT NULL,
    until      TIMESTAMPTZ NOT NULL
);
