-- Deadlines (EventStore::claim_due_deadlines): named timers of a consumer's instances, scheduled,
-- cancelled and fired by appends (in the append's transaction), claimed by due time. Times are
-- integers of microseconds since the Unix epoch (UTC), so comparisons are exact and cheap.
CREATE TABLE IF NOT EXISTS deadlines (
    id            BLOB    PRIMARY KEY NOT NULL,
    consumer      TEXT    NOT NULL,
    instance      TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    due_at        INTEGER NOT NULL,
    payload       BLOB    NOT NULL,
    fired         INTEGER NOT NULL DEFAULT 0 CHECK (fired IN (0, 1)),
    claimed_until INTEGER,
    claims        INTEGER NOT NULL DEFAULT 0 CHECK (claims >= 0)
);
-- Due ones of a consumer, earliest first.
CREATE INDEX IF NOT EXISTS deadlines_due ON deadlines (consumer, due_at);
-- A name is pending at most once per instance (a fired deadline keeps its row until completed).
CREATE UNIQUE INDEX IF NOT EXISTS deadlines_pending_name ON deadlines (consumer, instance, name) WHERE fired = 0;
