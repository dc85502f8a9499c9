-- Deadlines (EventStore::claim_due_deadlines): named timers of a consumer's instances, scheduled,
-- cancelled and fired by appends (in the append's transaction), claimed by due time with
-- FOR UPDATE SKIP LOCKED. Times are the callers' (never the server's clock).
CREATE TABLE composable_rust.deadlines (
    id            UUID        PRIMARY KEY,
    consumer      TEXT        NOT NULL,
    instance      TEXT        NOT NULL,
    name          TEXT        NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    payload       BYTEA       NOT NULL,
    fired         BOOLEAN     NOT NULL DEFAULT false,
    claimed_until TIMESTAMPTZ,
    claims        INTEGER     NOT NULL DEFAULT 0 CHECK (claims >= 0)
);
-- Due ones of a consumer, earliest first.
CREATE INDEX deadlines_due ON composable_rust.deadlines (consumer, due_at);
-- A name is pending at most once per instance (a fired deadline keeps its row until completed).
CREATE UNIQUE INDEX deadlines_pending_name ON composable_rust.deadlines (consumer, instance, name) WHERE NOT fired;
