-- Scheduling order of deadlines: deadlines due at the same instant fire in the order they were
-- scheduled (as TestStore fires them), whatever their ids.
ALTER TABLE composable_rust.deadlines ADD COLUMN seq BIGSERIAL NOT NULL;
CREATE INDEX deadlines_due_order ON composable_rust.deadlines (consumer, due_at, seq);
