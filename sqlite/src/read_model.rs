//! The SQLite store is also a [`ReadModelStore`]: projections' documents, checkpoints and leases in
//! the same file as the events (migration `20261125000005_read_models`).
//!
//! A commit is one `BEGIN IMMEDIATE` transaction on the writer connection: it takes the file's write
//! lock first (so another store on the same file, another process, waits for it), checks the
//! checkpoint, applies the document changes in order and moves the checkpoint. A crash between the
//! update and the checkpoint therefore cannot happen, and two workers committing from the same
//! checkpoint never both succeed.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use composable_rust_core::read_model::{prefix_successor, validate_commit};
use composable_rust_core::{Checkpoint, DocChange, EventFilter, EventStoreError, GlobalPosition, ReadModelError, ReadModelStore};
use sqlx::Row;

use crate::SqliteEventStore;
use crate::store::map_err;

fn store_err(e: sqlx::Error) -> ReadModelError {
    ReadModelError::Store(map_err(e))
}

fn corrupt(what: &str, reason: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Store(EventStoreError::Corrupt { reason: format!("{what}: {reason}") })
}

fn position_param(p: GlobalPosition) -> Result<i64, ReadModelError> {
    i64::try_from(p.0).map_err(|_| ReadModelError::InvalidRequest { reason: format!("position {} is beyond what the store keeps", p.0) })
}

fn position_of(stored: i64) -> GlobalPosition {
    GlobalPosition(u64::try_from(stored).unwrap_or_default())
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A time as the read-model tables store it: microseconds since the Unix epoch (UTC).
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The SQL condition on the events table aliased `e` that keeps what `filter` matches, with
/// numbered parameters from `?{first}` on, and their values in order; `None` when the filter
/// matches everything. A category `c` is the range `c-` (inclusive) to `c.` (exclusive): `.`
/// follows `-`, so that is exactly "starts with `c-`", whatever characters `c` holds.
pub(crate) fn filter_condition(filter: &EventFilter, first: usize) -> Option<(String, Vec<String>)> {
    let mut binds = Vec::new();
    let mut param = |value: String| {
        binds.push(value);
        format!("?{}", first + binds.len() - 1)
    };
    let mut parts = Vec::new();
    if !filter.categories.is_empty() {
        let ranges: Vec<String> = filter
            .categories
            .iter()
            .map(|c| {
                let (low, high) = (param(format!("{c}-")), param(format!("{c}.")));
                format!("(e.stream_id >= {low} AND e.stream_id < {high})")
            })
            .collect();
        parts.push(format!("({})", ranges.join(" OR ")));
    }
    if !filter.event_types.is_empty() {
        let types: Vec<String> = filter.event_types.iter().map(|t| param(t.clone())).collect();
        parts.push(format!("e.event_type IN ({})", types.join(", ")));
    }
    (!parts.is_empty()).then(|| (parts.join(" AND "), binds))
}

/// Applies one document change inside a commit's transaction.
async fn apply(conn: &mut sqlx::SqliteConnection, projection: &str, change: DocChange) -> Result<(), ReadModelError> {
    match change {
        DocChange::Put { key, value } => {
            sqlx::query("INSERT INTO read_models (projection, key, value) VALUES (?, ?, ?) ON CONFLICT (projection, key) DO UPDATE SET value = excluded.value")
                .bind(projection)
                .bind(key)
                .bind(value.to_vec())
                .execute(&mut *conn)
                .await
                .map_err(store_err)?;
        }
        DocChange::Delete { key } => {
            sqlx::query("DELETE FROM read_models WHERE projection = ? AND key = ?").bind(projection).bind(key).execute(&mut *conn).await.map_err(store_err)?;
        }
    }
    Ok(())
}

#[async_trait]
impl ReadModelStore for SqliteEventStore {
    async fn commit(&self, projection: &str, expected: GlobalPosition, to: GlobalPosition, changes: Vec<DocChange>) -> Result<(), ReadModelError> {
        validate_commit(projection, expected, to, &changes)?;
        let to_param = position_param(to)?;
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_err)?;
        let stored: Option<i64> = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = ?")
            .bind(projection)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_err)?;
        let actual = stored.map_or(GlobalPosition(0), position_of);
        if actual != expected {
            // Dropping `tx` rolls back (nothing was written).
            return Err(ReadModelError::CheckpointMoved { projection: projection.to_string(), expected, actual });
        }
        for change in changes {
            apply(&mut tx, projection, change).await?;
        }
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, position, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(projection)
        .bind(to_param)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(store_err)?;
        tx.commit().await.map_err(store_err)
    }

    async fn checkpoint(&self, projection: &str) -> Result<Checkpoint, ReadModelError> {
        let row = sqlx::query("SELECT position, updated_at FROM projection_checkpoints WHERE projection = ?")
            .bind(projection)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_err)?;
        let Some(row) = row else { return Ok(Checkpoint { position: GlobalPosition(0), updated_at: None }) };
        let get_err = |e: sqlx::Error| corrupt("checkpoint row", e);
        let position: i64 = row.try_get("position").map_err(get_err)?;
        let updated_us: i64 = row.try_get("updated_at").map_err(get_err)?;
        let updated_at = DateTime::from_timestamp_micros(updated_us).ok_or_else(|| corrupt(&format!("checkpoint time of {projection}"), updated_us))?;
        Ok(Checkpoint { position: position_of(position), updated_at: Some(updated_at) })
    }

    async fn get(&self, projection: &str, key: &str) -> Result<Option<Bytes>, ReadModelError> {
        let value: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM read_models WHERE projection = ? AND key = ?")
            .bind(projection)
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_err)?;
        Ok(value.map(Bytes::from))
    }

    async fn list(&self, projection: &str, prefix: &str, limit: usize) -> Result<Vec<(String, Bytes)>, ReadModelError> {
        let rows = match prefix_successor(prefix) {
            Some(end) => {
                sqlx::query("SELECT key, value FROM read_models WHERE projection = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?")
                    .bind(projection)
                    .bind(prefix)
                    .bind(end)
                    .bind(limit_param(limit))
                    .fetch_all(&self.reader)
                    .await
            }
            None => {
                sqlx::query("SELECT key, value FROM read_models WHERE projection = ? AND key >= ? ORDER BY key LIMIT ?")
                    .bind(projection)
                    .bind(prefix)
                    .bind(limit_param(limit))
                    .fetch_all(&self.reader)
                    .await
            }
        }
        .map_err(store_err)?;
        rows.iter()
            .map(|row| {
                let get_err = |e: sqlx::Error| corrupt("read-model row", e);
                let value: Vec<u8> = row.try_get("value").map_err(get_err)?;
                Ok((row.try_get("key").map_err(get_err)?, Bytes::from(value)))
            })
            .collect()
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadModelError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_err)?;
        for sql in ["DELETE FROM read_models WHERE projection = ?", "DELETE FROM projection_checkpoints WHERE projection = ?"] {
            sqlx::query(sql).bind(projection).execute(&mut *tx).await.map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), ReadModelError> {
        if live == shadow || live.is_empty() || shadow.is_empty() {
            return Err(ReadModelError::InvalidRequest { reason: format!("swap of {live:?} with {shadow:?}: two different, non-empty names") });
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_err)?;
        for sql in ["DELETE FROM projection_checkpoints WHERE projection = ?", "DELETE FROM read_models WHERE projection = ?"] {
            sqlx::query(sql).bind(live).execute(&mut *tx).await.map_err(store_err)?;
        }
        for sql in ["UPDATE projection_checkpoints SET projection = ? WHERE projection = ?", "UPDATE read_models SET projection = ? WHERE projection = ?"] {
            sqlx::query(sql).bind(live).bind(shadow).execute(&mut *tx).await.map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn try_lease(&self, projection: &str, worker: &str, now: DateTime<Utc>, lease: Duration) -> Result<bool, ReadModelError> {
        // One statement, so one write transaction: the take-if-free is a compare-and-set, also
        // against another store (process) on the same file.
        let until = micros(now).saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let taken = sqlx::query(
            "INSERT INTO projection_leases (projection, worker, until) VALUES (?, ?, ?) \
             ON CONFLICT (projection) DO UPDATE SET worker = excluded.worker, until = excluded.until \
             WHERE projection_leases.worker = excluded.worker OR projection_leases.until <= ?",
        )
        .bind(projection)
        .bind(worker)
        .bind(until)
        .bind(micros(now))
        .execute(&self.writer)
        .await
        .map_err(store_err)?;
        Ok(taken.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_becomes_numbered_ranges_and_a_type_list() {
        assert_eq!(filter_condition(&EventFilter::all(), 3), None);
        let (sql, binds) = filter_condition(&EventFilter::all().category("a_b").category("c").event_type("X.v1"), 3).unwrap();
        assert_eq!(sql, "((e.stream_id >= ?3 AND e.stream_id < ?4) OR (e.stream_id >= ?5 AND e.stream_id < ?6)) AND e.event_type IN (?7)");
        assert_eq!(binds, ["a_b-", "a_b.", "c-", "c.", "X.v1"]);
    }
}
