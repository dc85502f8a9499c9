-- Retention (EventStore::prune): it deletes outbox rows published, and inbox rows processed, before
-- a horizon, comparing times as text. Both columns now hold one sortable format, that of
-- inbox.processed_at (UTC, milliseconds, 'Z'); published_at used to be RFC 3339 with an offset and
-- up to nine fractional digits. A value SQLite cannot parse is left as it is (never made NULL, which
-- would turn a published row pending again).
UPDATE outbox SET published_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', published_at), published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_processed ON inbox (processed_at);
