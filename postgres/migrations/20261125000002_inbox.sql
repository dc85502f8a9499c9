-- Consumer inbox: which consumer has handled which event, written in the same statement as the
-- consumer's own append, so a redelivered event cannot be applied twice.
CREATE TABLE composable_rust.inbox (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, event_id)
);
