//! The PostgreSQL store is also a [`ReadModelStore`]: projections' documents, checkpoints and leases
//! in the `composable_rust` schema (migration `20261125000005_read_models`).
//!
//! A commit is **one statement** (one round trip, one transaction): its first part moves the
//! checkpoint row only if it still holds the expected position (an `UPDATE ... WHERE position =
//! expected`, or for a projection at 0 an `INSERT ... ON CONFLICT DO UPDATE ... WHERE position = 0`,
//! so two first commits cannot both insert), and the document changes are applied only if it did.
//! The row lock makes concurrent commits of one projection (other workers, other processes) wait
//! for each other and re-check: one wins, the others write nothing and get
//! [`ReadModelError::CheckpointMoved`]. `swap` and `reset` lock the same rows first.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use composable_rust_core::read_model::{prefix_successor, validate_commit};
use composable_rust_core::{Checkpoint, DocChange, EventFilter, EventStoreError, GlobalPosition, ReadModelError, ReadModelStore};
use sqlx::{PgConnection, Row};

use crate::PostgresEventStore;
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

/// A time as bound to a `$n::text::timestamptz` parameter: RFC 3339, UTC, microseconds.
fn pg_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The end of a lease taken at `now`, at most the end of year 9999 (a huge lease holds "forever").
fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    const LAST_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let end = now.timestamp_micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)).min(LAST_MICROS);
    DateTime::from_timestamp_micros(end).unwrap_or(now)
}

/// `text` as a `LIKE` pattern matching itself only (backslash is PostgreSQL's default escape).
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The SQL condition on the events table aliased `e` that keeps what `filter` matches, with
/// parameters from `${first}` on, and their values (text arrays) in order; `None` when the filter
/// matches everything. Categories are `e.stream_id LIKE ANY('{cat-%,...}')` with the category
/// escaped, event types `e.event_type = ANY(...)`.
pub(crate) fn filter_condition(filter: &EventFilter, first: usize) -> Option<(String, Vec<Vec<String>>)> {
    let mut arrays = Vec::new();
    let mut parts = Vec::new();
    if !filter.categories.is_empty() {
        arrays.push(filter.categories.iter().map(|c| format!("{}-%", like_literal(c))).collect());
        parts.push(format!("e.stream_id LIKE ANY(${}::text[])", first + arrays.len() - 1));
    }
    if !filter.event_types.is_empty() {
        arrays.push(filter.event_types.clone());
        parts.push(format!("e.event_type = ANY(${}::text[])", first + arrays.len() - 1));
    }
    (!parts.is_empty()).then(|| (parts.join(" AND "), arrays))
}

/// What a commit's changes leave, key by key (the last change of a key wins, as applying them in
/// order would): the keys deleted, and the keys and values put. One `DELETE` and one upsert then
/// apply them, which `ON CONFLICT DO UPDATE` allows only with each key once.
fn net_changes(changes: Vec<DocChange>) -> (Vec<String>, Vec<String>, Vec<Bytes>) {
    let mut last: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    for change in changes {
        match change {
            DocChange::Put { key, value } => last.insert(key, Some(value)),
            DocChange::Delete { key } => last.insert(key, None),
        };
    }
    let (mut deleted, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in last {
        match value {
            Some(value) => {
                keys.push(key);
                values.push(value);
            }
            None => deleted.push(key),
        }
    }
    (deleted, keys, values)
}

/// Locks `projection`'s checkpoint row for the rest of the transaction (inserting a placeholder at 0
/// if there is none, which blocks a concurrent first commit the same way), so that no commit of it
/// runs meanwhile; whether the row was a placeholder this inserted.
async fn lock_checkpoint(conn: &mut PgConnection, projection: &str) -> Result<bool, ReadModelError> {
    sqlx::query_scalar(
        "INSERT INTO composable_rust.projection_checkpoints AS c (projection, position) VALUES ($1, 0) \
         ON CONFLICT (projection) DO UPDATE SET position = c.position RETURNING (xmax = 0)",
    )
    .bind(projection)
    .fetch_one(&mut *conn)
    .await
    .map_err(store_err)
}

#[async_trait]
impl ReadModelStore for PostgresEventStore {
    async fn commit(&self, projection: &str, expected: GlobalPosition, to: GlobalPosition, changes: Vec<DocChange>) -> Result<(), ReadModelError> {
        validate_commit(projection, expected, to, &changes)?;
        let (expected_param, to_param) = (position_param(expected)?, position_param(to)?);
        // The checkpoint's compare-and-set. Under READ COMMITTED both forms wait for a concurrent
        // writer of the row and then re-check the condition on the row it committed.
        let move_checkpoint = if expected == GlobalPosition(0) {
            "INSERT INTO composable_rust.projection_checkpoints AS c (projection, position, updated_at) VALUES ($1, $3, now()) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at WHERE c.position = $2 \
             RETURNING 1"
        } else {
            "UPDATE composable_rust.projection_checkpoints SET position = $3, updated_at = now() WHERE projection = $1 AND position = $2 RETURNING 1"
        };
        let (deleted, keys, values) = net_changes(changes);
        let values: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
        let sql = format!(
            "WITH cp AS ({move_checkpoint}), \
             del AS (DELETE FROM composable_rust.read_models WHERE projection = $1 AND key = ANY($4::text[]) AND EXISTS (SELECT 1 FROM cp)), \
             ins AS (INSERT INTO composable_rust.read_models (projection, key, value) \
                     SELECT $1, k, v FROM unnest($5::text[], $6::bytea[]) AS t(k, v) WHERE EXISTS (SELECT 1 FROM cp) \
                     ON CONFLICT (projection, key) DO UPDATE SET value = excluded.value) \
             SELECT count(*) FROM cp"
        );
        let moved: i64 = sqlx::query_scalar(&sql)
            .bind(projection)
            .bind(expected_param)
            .bind(to_param)
            .bind(&deleted)
            .bind(&keys)
            .bind(&values)
            .fetch_one(self.raw_pool())
            .await
            .map_err(store_err)?;
        if moved == 1 {
            return Ok(());
        }
        let actual = self.checkpoint(projection).await?.position;
        Err(ReadModelError::CheckpointMoved { projection: projection.to_string(), expected, actual })
    }

    async fn checkpoint(&self, projection: &str) -> Result<Checkpoint, ReadModelError> {
        let row = sqlx::query(
            "SELECT position, (extract(epoch FROM updated_at) * 1000000)::bigint AS updated_us FROM composable_rust.projection_checkpoints WHERE projection = $1",
        )
        .bind(projection)
        .fetch_optional(self.raw_pool())
        .await
        .map_err(store_err)?;
        let Some(row) = row else { return Ok(Checkpoint { position: GlobalPosition(0), updated_at: None }) };
        let get_err = |e: sqlx::Error| corrupt("checkpoint row", e);
        let position: i64 = row.try_get("position").map_err(get_err)?;
        let updated_us: i64 = row.try_get("updated_us").map_err(get_err)?;
        let updated_at = DateTime::from_timestamp_micros(updated_us).ok_or_else(|| corrupt(&format!("checkpoint time of {projection}"), updated_us))?;
        Ok(Checkpoint { position: position_of(position), updated_at: Some(updated_at) })
    }

    async fn get(&self, projection: &str, key: &str) -> Result<Option<Bytes>, ReadModelError> {
        let value: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM composable_rust.read_models WHERE projection = $1 AND key = $2")
            .bind(projection)
            .bind(key)
            .fetch_optional(self.raw_pool())
            .await
            .map_err(store_err)?;
        Ok(value.map(Bytes::from))
    }

    async fn list(&self, projection: &str, prefix: &str, limit: usize) -> Result<Vec<(String, Bytes)>, ReadModelError> {
        let rows = sqlx::query(
            "SELECT key, value FROM composable_rust.read_models \
             WHERE projection = $1 AND key >= $2 COLLATE \"C\" AND ($3::text IS NULL OR key < $3 COLLATE \"C\") ORDER BY key LIMIT $4",
        )
        .bind(projection)
        .bind(prefix)
        .bind(prefix_successor(prefix))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.raw_pool())
        .await
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
        let mut tx = self.raw_pool().begin().await.map_err(store_err)?;
        lock_checkpoint(&mut tx, projection).await?;
        for sql in ["DELETE FROM composable_rust.read_models WHERE projection = $1", "DELETE FROM composable_rust.projection_checkpoints WHERE projection = $1"]
        {
            sqlx::query(sql).bind(projection).execute(&mut *tx).await.map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), ReadModelError> {
        if live == shadow || live.is_empty() || shadow.is_empty() {
            return Err(ReadModelError::InvalidRequest { reason: format!("swap of {live:?} with {shadow:?}: two different, non-empty names") });
        }
        let mut tx = self.raw_pool().begin().await.map_err(store_err)?;
        // Both checkpoint rows, in name order (two swaps cannot deadlock): no commit of either runs
        // until this one ends, and then finds the checkpoint moved.
        let (first, second) = if live < shadow { (live, shadow) } else { (shadow, live) };
        let first_new = lock_checkpoint(&mut tx, first).await?;
        let second_new = lock_checkpoint(&mut tx, second).await?;
        let shadow_had_no_checkpoint = if first == shadow { first_new } else { second_new };
        sqlx::query("DELETE FROM composable_rust.read_models WHERE projection = $1").bind(live).execute(&mut *tx).await.map_err(store_err)?;
        sqlx::query("UPDATE composable_rust.read_models SET projection = $1 WHERE projection = $2")
            .bind(live)
            .bind(shadow)
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
        sqlx::query("DELETE FROM composable_rust.projection_checkpoints WHERE projection = $1").bind(live).execute(&mut *tx).await.map_err(store_err)?;
        if shadow_had_no_checkpoint {
            // A shadow never committed is at 0 with no time: so is the live one now.
            sqlx::query("DELETE FROM composable_rust.projection_checkpoints WHERE projection = $1").bind(shadow).execute(&mut *tx).await.map_err(store_err)?;
        } else {
            sqlx::query("UPDATE composable_rust.projection_checkpoints SET projection = $1 WHERE projection = $2")
                .bind(live)
                .bind(shadow)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn try_lease(&self, projection: &str, worker: &str, now: DateTime<Utc>, lease: Duration) -> Result<bool, ReadModelError> {
        // One statement: the row lock makes the take-if-free a compare-and-set.
        let taken = sqlx::query(
            "INSERT INTO composable_rust.projection_leases AS l (projection, worker, until) VALUES ($1, $2, $3::text::timestamptz) \
             ON CONFLICT (projection) DO UPDATE SET worker = excluded.worker, until = excluded.until \
             WHERE l.worker = excluded.worker OR l.until <= $4::text::timestamptz",
        )
        .bind(projection)
        .bind(worker)
        .bind(pg_time(lease_end(now, lease)))
        .bind(pg_time(now))
        .execute(self.raw_pool())
        .await
        .map_err(store_err)?;
        Ok(taken.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_becomes_escaped_patterns_and_a_type_list() {
        assert_eq!(filter_condition(&EventFilter::all(), 4), None);
        let (sql, arrays) = filter_condition(&EventFilter::all().category("a_b%").category("c\\").event_type("X.v1"), 4).unwrap();
        assert_eq!(sql, "e.stream_id LIKE ANY($4::text[]) AND e.event_type = ANY($5::text[])");
        assert_eq!(arrays, [vec!["a\\_b\\%-%".to_string(), "c\\\\-%".to_string()], vec!["X.v1".to_string()]]);
        let (sql, _) = filter_condition(&EventFilter::all().event_type("X.v1"), 4).unwrap();
        assert_eq!(sql, "e.event_type = ANY($4::text[])");
    }

    #[test]
    fn the_last_change_of_a_key_wins() {
        let put = |k: &str, v: &'static str| DocChange::Put { key: k.into(), value: Bytes::from_static(v.as_bytes()) };
        let (deleted, keys, values) =
            net_changes(vec![put("b", "3"), DocChange::Delete { key: "a".into() }, put("b", "4"), put("c", "1"), DocChange::Delete { key: "c".into() }]);
        assert_eq!(deleted, ["a", "c"]);
        assert_eq!(keys, ["b"]);
        assert_eq!(values, [Bytes::from_static(b"4")]);
    }
}
