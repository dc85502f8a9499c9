-- Retention (EventStore::prune): it deletes outbox rows published, and inbox rows processed, before
-- a horizon, a batch at a time; these indexes find them without scanning the tables.
CREATE INDEX IF NOT EXISTS outbox_published ON composable_rust.outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_processed ON composable_rust.inbox (processed_at);
