//! The PostgreSQL implementation.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use composable_rust_core::event_store::{PruneReport, StoreCause, identical_retry};
use composable_rust_core::{
    AppendRequest, AppendResult, ClaimedDeadline, DeadlineChange, DeadlineOwner, EventFilter, EventMetadata, EventStore, EventStoreError, ExpectedVersion,
    FilteredPage, GlobalPosition, PendingPublication, RecordedEvent, SerializedEvent, Snapshot, StoredDeadline, StreamId, Topic, Version,
};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{PostgresConfig, PostgresError};
use crate::group_commit::{GroupCommit, GroupCommitStats, MAX_GROUP_EVENTS, Outcome};
use crate::marks::MarkBatcher;

/// The advisory lock appends hold shared and `read_all` takes exclusive (see the crate docs).
pub const APPEND_LOCK_KEY: i64 = 0x6372_5f65_7665_6e74; // "cr_event"

/// The PostgreSQL event store. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct PostgresEventStore {
    pool: PgPool,
    group_commit: Option<Arc<GroupCommit>>,
    /// Outbox marks written together (on with group commit).
    marks: Option<Arc<MarkBatcher>>,
    /// The highest read horizon this store has seen. Every position at or below a horizon stays
    /// committed-or-never for good, so a read starting below it needs no fresh horizon (and no
    /// exclusive advisory lock): a catch-up of many pages takes one instead of one per page.
    known_horizon: Arc<AtomicI64>,
}

/// How many rows one `DELETE` of [`EventStore::prune`] removes at most: each batch is a short
/// transaction, so a large prune neither holds locks long nor writes one huge WAL record.
const PRUNE_BATCH: i64 = 10_000;

pub(crate) fn map_err(e: sqlx::Error) -> EventStoreError {
    enum Kind {
        Transient,
        SchemaMissing,
        Other,
    }
    let kind = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => Kind::Transient,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("42P01" | "3F000") => Kind::SchemaMissing,
            // query_canceled (statement timeout), too many connections, serialization failures: try again.
            Some("57014" | "53300" | "40001" | "40P01") => Kind::Transient,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    };
    match kind {
        Kind::Transient => EventStoreError::unavailable(e),
        Kind::SchemaMissing => EventStoreError::backend(StoreCause::with_hint(e, "the event store schema is missing; call PostgresEventStore::migrate() once")),
        Kind::Other => EventStoreError::backend(e),
    }
}

/// The violated constraint's name, if `e` is a unique violation.
fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => Some(db.constraint().unwrap_or("")),
        _ => None,
    }
}

fn corrupt(what: &str, reason: impl std::fmt::Display) -> EventStoreError {
    EventStoreError::Corrupt { reason: format!("{what}: {reason}") }
}

#[allow(clippy::cast_possible_wrap)] // versions and positions stay far below i64::MAX
pub(crate) fn to_i64(v: u64) -> i64 {
    v as i64
}

#[allow(clippy::cast_sign_loss)] // stored versions and positions are never negative (CHECK constraints)
pub(crate) fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id::text AS event_id, event_type, payload, metadata::text AS metadata";

/// The columns of events to insert, as parallel arrays for `UNNEST`.
#[derive(Debug, Default)]
pub(crate) struct EventColumns<'a> {
    pub(crate) ids: Vec<String>,
    pub(crate) types: Vec<&'a str>,
    pub(crate) schema_versions: Vec<Option<i32>>,
    pub(crate) payloads: Vec<&'a [u8]>,
    pub(crate) metadata: Vec<String>,
}

impl<'a> EventColumns<'a> {
    pub(crate) fn push_all(&mut self, events: &'a [SerializedEvent]) -> Result<(), EventStoreError> {
        for e in events {
            let metadata =
                serde_json::to_string(&e.metadata).map_err(|err| EventStoreError::InvalidRequest { reason: format!("metadata of {}: {err}", e.event_id) })?;
            self.ids.push(e.event_id.to_string());
            self.types.push(e.event_type.as_str());
            self.schema_versions.push(e.schema_version().and_then(|v| i32::try_from(v).ok()));
            self.payloads.push(&e.data[..]);
            self.metadata.push(metadata);
        }
        Ok(())
    }
}

/// [`EVENT_COLUMNS`] qualified by a table alias, for joins.
fn event_columns_of(alias: &str) -> String {
    format!(
        "{alias}.global_position, {alias}.stream_id, {alias}.stream_version, {alias}.event_id::text AS event_id, {alias}.event_type, {alias}.payload, {alias}.metadata::text AS metadata"
    )
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent, EventStoreError> {
    let get_err = |e: sqlx::Error| corrupt("event row", e);
    let id: String = row.try_get("event_id").map_err(get_err)?;
    let event_id = Uuid::parse_str(&id).map_err(|e| corrupt("event id", e))?;
    let stream: String = row.try_get("stream_id").map_err(get_err)?;
    let metadata_json: String = row.try_get("metadata").map_err(get_err)?;
    let metadata: EventMetadata = serde_json::from_str(&metadata_json).map_err(|e| corrupt(&format!("metadata of event {event_id}"), e))?;
    let payload: Vec<u8> = row.try_get("payload").map_err(get_err)?;
    Ok(RecordedEvent {
        position: GlobalPosition(to_u64(row.try_get("global_position").map_err(get_err)?)),
        event: SerializedEvent {
            event_id,
            event_type: row.try_get("event_type").map_err(get_err)?,
            stream_id: Some(StreamId::new(stream).map_err(|e| corrupt("stream id", e))?),
            stream_version: Some(Version(to_u64(row.try_get("stream_version").map_err(get_err)?))),
            data: Bytes::from(payload),
            metadata,
        },
    })
}

/// The columns [`deadline_from_row`] reads; the due time as microseconds since the Unix epoch
/// (exact: `extract` gives a numeric).
const DEADLINE_COLUMNS: &str =
    "id::text AS id, consumer, instance, name, (extract(epoch FROM due_at) * 1000000)::bigint AS due_us, payload, fired, claims, seq";

/// A time as bound to a `$n::text::timestamptz` parameter: RFC 3339, UTC, microseconds (what
/// `timestamptz` keeps), so it is stored exactly.
fn pg_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The end of a claim taken at `now` for `lease`, at most the end of year 9999 (a huge lease holds
/// "forever" instead of overflowing).
fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    const LAST_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let end = now.timestamp_micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)).min(LAST_MICROS);
    DateTime::from_timestamp_micros(end).unwrap_or(now)
}

/// A deadline row, with whether it fired and how often it was claimed.
fn deadline_from_row(row: &PgRow) -> Result<ClaimedDeadline, EventStoreError> {
    let get_err = |e: sqlx::Error| corrupt("deadline row", e);
    let id: String = row.try_get("id").map_err(get_err)?;
    let id = Uuid::parse_str(&id).map_err(|e| corrupt("deadline id", e))?;
    let due_us: i64 = row.try_get("due_us").map_err(get_err)?;
    let due_at = DateTime::from_timestamp_micros(due_us).ok_or_else(|| corrupt(&format!("due time of deadline {id}"), due_us))?;
    let payload: Vec<u8> = row.try_get("payload").map_err(get_err)?;
    let claims: i32 = row.try_get("claims").map_err(get_err)?;
    Ok(ClaimedDeadline {
        deadline: StoredDeadline {
            id,
            owner: DeadlineOwner::new(row.try_get::<String, _>("consumer").map_err(get_err)?, row.try_get::<String, _>("instance").map_err(get_err)?),
            name: row.try_get("name").map_err(get_err)?,
            due_at,
            payload: Bytes::from(payload),
        },
        fired: row.try_get("fired").map_err(get_err)?,
        claims: u32::try_from(claims).unwrap_or_default(),
    })
}

/// Applies one deadline change of an append inside its transaction, after the append's statement
/// passed every check. A `Fire` of a deadline that is not pending is
/// [`EventStoreError::DeadlineNotPending`]; the caller then drops the transaction, which rolls the
/// whole append back.
async fn apply_deadline_change(conn: &mut sqlx::PgConnection, change: &DeadlineChange) -> Result<(), EventStoreError> {
    match change {
        DeadlineChange::Schedule(d) => {
            // The pending one of the name goes, and a row of the same id (the same step scheduling
            // again). Should a concurrent append of another stream schedule the same name first,
            // the insert replaces that one too instead of failing on the pending-name index.
            sqlx::query(
                "DELETE FROM composable_rust.deadlines \
                 WHERE (consumer = $1 AND instance = $2 AND name = $3 AND NOT fired) OR id = $4::text::uuid",
            )
            .bind(d.owner.consumer.as_str())
            .bind(d.owner.instance.as_str())
            .bind(d.name.as_str())
            .bind(d.id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            sqlx::query(
                "INSERT INTO composable_rust.deadlines (id, consumer, instance, name, due_at, payload) \
                 VALUES ($4::text::uuid, $1, $2, $3, $5::text::timestamptz, $6) \
                 ON CONFLICT (consumer, instance, name) WHERE NOT fired DO UPDATE \
                 SET id = excluded.id, due_at = excluded.due_at, payload = excluded.payload, claimed_until = NULL, claims = 0, \
                     seq = nextval(pg_get_serial_sequence('composable_rust.deadlines', 'seq'))",
            )
            .bind(d.owner.consumer.as_str())
            .bind(d.owner.instance.as_str())
            .bind(d.name.as_str())
            .bind(d.id.to_string())
            .bind(pg_time(d.due_at))
            .bind(&d.payload[..])
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        }
        DeadlineChange::Cancel { owner, name } => {
            sqlx::query("DELETE FROM composable_rust.deadlines WHERE consumer = $1 AND instance = $2 AND name = $3 AND NOT fired")
                .bind(owner.consumer.as_str())
                .bind(owner.instance.as_str())
                .bind(name.as_str())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        DeadlineChange::Fire { id } => {
            let fired = sqlx::query("UPDATE composable_rust.deadlines SET fired = true WHERE id = $1::text::uuid AND NOT fired")
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            if fired.rows_affected() == 0 {
                return Err(EventStoreError::DeadlineNotPending { id: *id });
            }
        }
    }
    Ok(())
}

impl PostgresEventStore {
    /// Connects to the database a PostgreSQL URL names (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`,
    /// see [`PostgresConfig::from_url`]) with default settings. Call
    /// [`PostgresEventStore::migrate`] once per database.
    pub async fn connect(url: &str) -> Result<Self, PostgresError> {
        Self::connect_with(PostgresConfig::from_url(url)?).await
    }

    /// Connects with `config`.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self, PostgresError> {
        let options = config.connect_options()?;
        let (host, port) = (options.get_host().to_string(), options.get_port());
        let timeout_ms = config.statement_timeout().as_millis().to_string();
        let options = options.options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections())
            // sqlx pings a pooled connection before every use by default: a second round trip per
            // append. A connection that died is reported by the statement itself (a retryable
            // `Unavailable`) and dropped by the pool.
            .test_before_acquire(false)
            .acquire_timeout(config.acquire_timeout())
            .connect_with(options)
            .await
            .map_err(|e| PostgresError::Unreachable { host, port, reason: e.to_string() })?;
        let group_commit = (config.max_appends_per_statement() > 1)
            .then(|| Arc::new(GroupCommit::start(pool.clone(), config.max_appends_per_statement(), config.group_statements_in_flight())));
        let marks = group_commit.is_some().then(|| Arc::new(MarkBatcher::start(pool.clone())));
        Ok(Self { pool, group_commit, marks, known_horizon: Arc::new(AtomicI64::new(0)) })
    }

    /// Creates or upgrades the schema (embedded migrations; safe to call on every start).
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        sqlx::migrate!("./migrations").run(&self.pool).await.map_err(|e| PostgresError::Migrate { reason: e.to_string() })
    }

    /// What group commit has combined so far (all zero when it is off).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.group_commit.as_ref().map(|g| g.stats()).unwrap_or_default()
    }

    /// Statements that marked outbox entries published in batches so far (0 with group commit off,
    /// where every mark is a statement of its own). Concurrent
    /// [`mark_published`](EventStore::mark_published) calls share one statement.
    pub fn outbox_mark_statements(&self) -> u64 {
        self.marks.as_ref().map_or(0, |m| m.statements())
    }

    /// **Escape hatch**: the sqlx connection pool, for tests and tools that run their own SQL. Using
    /// it ties your code to the sqlx version this crate depends on; everything else in this crate's
    /// API is free of it.
    pub fn raw_pool(&self) -> &PgPool {
        &self.pool
    }

    /// The result of an earlier identical append of the request's events, if there is one; an id
    /// stored with other content is an error.
    async fn earlier_append(executor: &mut sqlx::PgConnection, request: &AppendRequest) -> Result<Option<AppendResult>, EventStoreError> {
        let ids: Vec<String> = request.events.iter().map(|e| e.event_id.to_string()).collect();
        let rows =
            sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM composable_rust.events WHERE event_id = ANY($1::text[]::uuid[]) ORDER BY global_position"))
                .bind(&ids)
                .fetch_all(&mut *executor)
                .await
                .map_err(map_err)?;
        let stored: Vec<RecordedEvent> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        identical_retry(request, &stored)
    }

    /// The whole append in one statement (one round trip, one implicit transaction): take the shared
    /// append lock, claim the versions on the stream's row, insert the events and the outbox intents.
    /// An expected-version mismatch inserts nothing; a reused event id fails the statement, and the
    /// caller then tells an identical retry from a real reuse.
    async fn try_append(&self, request: &AppendRequest) -> Result<AppendResult, EventStoreError> {
        match Self::append_statement(&self.pool, request).await? {
            Some(result) => Ok(result),
            None => Err(self.conflict(request).await),
        }
    }

    /// An append carrying deadline changes: the append's statement, then the changes in order, in one
    /// transaction. The statement holds the shared append lock and the stream's row until the commit,
    /// as it does alone; a version mismatch or a refused `Fire` rolls back everything.
    async fn append_with_deadlines(&self, request: &AppendRequest) -> Result<AppendResult, EventStoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(result) = Self::append_statement(&mut *tx, request).await? else {
            tx.rollback().await.map_err(map_err)?;
            return Err(self.conflict(request).await);
        };
        for change in &request.deadlines {
            // On an error `tx` is dropped, which rolls the append back.
            apply_deadline_change(&mut tx, change).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(result)
    }

    /// The append statement of [`Self::try_append`] on `executor` (the pool, or a transaction);
    /// `None` when the stream was not at the expected version (nothing was written).
    async fn append_statement<'c>(executor: impl sqlx::PgExecutor<'c>, request: &AppendRequest) -> Result<Option<AppendResult>, EventStoreError> {
        let n = i64::try_from(request.events.len()).unwrap_or(i64::MAX);
        let claim = match request.expected_version {
            ExpectedVersion::Any => {
                "INSERT INTO composable_rust.streams (stream_id, version) SELECT $2, $3 FROM gate \
                 ON CONFLICT (stream_id) DO UPDATE SET version = composable_rust.streams.version + $3 RETURNING version"
            }
            ExpectedVersion::NoStream | ExpectedVersion::Exact(Version(0)) => {
                "INSERT INTO composable_rust.streams (stream_id, version) SELECT $2, $3 FROM gate ON CONFLICT (stream_id) DO NOTHING RETURNING version"
            }
            ExpectedVersion::Exact(_) => {
                "UPDATE composable_rust.streams SET version = version + $3 FROM gate WHERE stream_id = $2 AND version = $11 RETURNING version"
            }
        };
        let expected = match request.expected_version {
            ExpectedVersion::Exact(v) => to_i64(v.0),
            _ => 0,
        };
        let sql = format!(
            "WITH gate AS (SELECT pg_advisory_xact_lock_shared($1) AS locked), \
             claim AS ({claim}), \
             ins AS ( \
               INSERT INTO composable_rust.events (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata) \
               SELECT $2, c.version - $3 + u.ord, u.id::uuid, u.t, u.sv, u.p, u.m::jsonb \
               FROM claim c, UNNEST($4::text[], $5::text[], $6::int[], $7::bytea[], $8::text[]) WITH ORDINALITY AS u(id, t, sv, p, m, ord) \
               ORDER BY u.ord RETURNING global_position), \
             inbox AS ( \
               INSERT INTO composable_rust.inbox (consumer, event_id) SELECT $12, $13::uuid FROM claim WHERE $12::text IS NOT NULL), \
             outbox AS ( \
               INSERT INTO composable_rust.outbox (event_id, topic) \
               SELECT o.id::uuid, o.t FROM UNNEST($9::text[], $10::text[]) AS o(id, t) WHERE EXISTS (SELECT 1 FROM ins) \
               ON CONFLICT (event_id, topic) DO NOTHING) \
             SELECT (SELECT version FROM claim) AS new_version, (SELECT min(global_position) FROM ins) AS first_position"
        );
        let mut columns = EventColumns::default();
        columns.push_all(&request.events)?;
        let outbox_ids: Vec<String> = request.outbox.iter().map(|o| o.event_id.to_string()).collect();
        let topics: Vec<&str> = request.outbox.iter().map(|o| o.topic.as_str()).collect();
        let row = sqlx::query(&sql)
            .bind(APPEND_LOCK_KEY)
            .bind(request.stream_id.as_str())
            .bind(n)
            .bind(&columns.ids)
            .bind(&columns.types)
            .bind(&columns.schema_versions)
            .bind(&columns.payloads)
            .bind(&columns.metadata)
            .bind(&outbox_ids)
            .bind(&topics)
            .bind(expected)
            .bind(request.inbox.as_ref().map(|m| m.consumer.as_str()))
            .bind(request.inbox.as_ref().map(|m| m.event_id.to_string()))
            .fetch_one(executor)
            .await
            .map_err(|e| match (&request.inbox, unique_violation(&e)) {
                (Some(mark), Some("inbox_pkey")) => EventStoreError::AlreadyProcessed { consumer: mark.consumer.clone(), event_id: mark.event_id },
                (_, Some(_)) => EventStoreError::EventIdReused { event_id: request.events[0].event_id, stream_id: request.stream_id.clone() },
                (_, None) => map_err(e),
            })?;
        let new_version: Option<i64> = row.try_get("new_version").map_err(map_err)?;
        let first_position: Option<i64> = row.try_get("first_position").map_err(map_err)?;
        let (Some(new_version), Some(first_position)) = (new_version, first_position) else {
            return Ok(None);
        };
        let before = Version(to_u64(new_version - n));
        Ok(Some(AppendResult {
            first_version: before.next(),
            next_expected_version: Version(to_u64(new_version)),
            first_position: GlobalPosition(to_u64(first_position)),
            duplicate: false,
        }))
    }

    /// The `ConcurrencyConflict` for `request`, with the stream's version as it is now.
    async fn conflict(&self, request: &AppendRequest) -> EventStoreError {
        match self.stream_version(&request.stream_id).await {
            Ok(actual) => EventStoreError::ConcurrencyConflict { stream_id: request.stream_id.clone(), expected: request.expected_version, actual },
            Err(e) => e,
        }
    }

    /// The append through the group writer when there is one, else on its own.
    async fn append_grouped_or_alone(&self, request: &Arc<AppendRequest>) -> Result<AppendResult, EventStoreError> {
        // Deadline changes are applied in order, each depending on the ones before (schedule then
        // cancel, a `Fire` that may refuse the append), which one group statement cannot express,
        // and one append's `DeadlineNotPending` must not fail the others of its group: appends that
        // carry deadline changes never join a group, they run in a transaction of their own.
        if !request.deadlines.is_empty() {
            return self.append_with_deadlines(request).await;
        }
        let outcome = match &self.group_commit {
            Some(group) if request.events.len() <= MAX_GROUP_EVENTS => group.append(Arc::clone(request)).await,
            _ => Outcome::RunAlone(None),
        };
        match outcome {
            Outcome::Appended(result) => Ok(result),
            Outcome::VersionMismatch => Err(self.conflict(request).await),
            Outcome::RunAlone(_slot) => self.try_append(request).await,
        }
    }

    /// Runs `sql` (a `DELETE` of at most `PRUNE_BATCH` rows older than `$1`, the limit being `$2`)
    /// until it deletes fewer than a batch; the number of rows deleted in all.
    async fn delete_in_batches(&self, sql: &str, horizon: &str) -> Result<u64, EventStoreError> {
        let mut deleted = 0;
        loop {
            let done = sqlx::query(sql).bind(horizon).bind(PRUNE_BATCH).execute(&self.pool).await.map_err(map_err)?.rows_affected();
            deleted += done;
            if done < PRUNE_BATCH.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }

    /// The highest position below which no append is still in flight (see the crate docs).
    async fn read_horizon(&self) -> Result<i64, EventStoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPEND_LOCK_KEY).execute(&mut *tx).await.map_err(map_err)?;
        let horizon: i64 =
            sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM composable_rust.events").fetch_one(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        self.known_horizon.fetch_max(horizon, Ordering::Relaxed);
        Ok(horizon)
    }

    /// A read horizon above `after` if one is known, else a fresh one. Reads that start below the
    /// last horizon seen (a catch-up) reuse it; a reader at the horizon (tailing) asks again.
    async fn horizon_above(&self, after: i64) -> Result<i64, EventStoreError> {
        let known = self.known_horizon.load(Ordering::Relaxed);
        if known > after { Ok(known) } else { self.read_horizon().await }
    }

    /// Up to `limit` events after `after`, at or below `horizon`, in position order.
    async fn page_below(&self, after: GlobalPosition, horizon: i64, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM composable_rust.events WHERE global_position > $1 AND global_position <= $2 ORDER BY global_position LIMIT $3"
        ))
        .bind(to_i64(after.0))
        .bind(horizon)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    fn read_model_store(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn composable_rust_core::ReadModelStore>> {
        Some(self)
    }

    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        request.validate()?;
        let span = tracing::debug_span!("append", store = "postgres", stream = %request.stream_id, events = request.events.len());
        let request = Arc::new(request);
        match self.append_grouped_or_alone(&request).instrument(span).await {
            // An identical retry (or one that raced with us) is success, not a conflict.
            Err(e @ (EventStoreError::ConcurrencyConflict { .. } | EventStoreError::EventIdReused { .. } | EventStoreError::AlreadyProcessed { .. })) => {
                let mut conn = self.pool.acquire().await.map_err(map_err)?;
                match Self::earlier_append(&mut conn, &request).await? {
                    Some(earlier) => Ok(earlier),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn read_stream(&self, stream_id: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM composable_rust.events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
        ))
        .bind(stream_id.as_str())
        .bind(to_i64(from.0))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(|r| event_from_row(r).map(|e| e.event)).collect()
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version, EventStoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM composable_rust.streams WHERE stream_id = $1")
            .bind(stream_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(Version(v.map_or(0, to_u64)))
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let horizon = self.horizon_above(to_i64(after.0)).await?;
        self.page_below(after, horizon, limit).await
    }

    async fn head(&self) -> Result<GlobalPosition, EventStoreError> {
        // The read horizon: what `read_all` can return now, with no append still in flight below.
        Ok(GlobalPosition(to_u64(self.read_horizon().await?)))
    }

    async fn read_all_filtered(&self, after: GlobalPosition, limit: usize, filter: &EventFilter) -> Result<FilteredPage, EventStoreError> {
        // The horizon first: every position up to it is committed (or never will be), so the
        // select after it cannot miss a matching event at or below `scanned_to`.
        let horizon = self.horizon_above(to_i64(after.0)).await?;
        if limit == 0 || horizon <= to_i64(after.0) {
            return Ok(FilteredPage { events: Vec::new(), scanned_to: after });
        }
        if filter.is_all() {
            // Every event matches: the plain page, scanned to its last event when full (the
            // next event may lie beyond the horizon), else to the horizon.
            let events = self.page_below(after, horizon, limit).await?;
            let scanned_to = match events.last() {
                Some(last) if events.len() == limit => last.position,
                _ => GlobalPosition(to_u64(horizon)),
            };
            return Ok(FilteredPage { events, scanned_to });
        }
        // `scan_end` is the `limit`-th event after `after`, or the horizon when fewer follow; the
        // rows are the events up to it that `filter` matches. A LEFT JOIN keeps one row (of NULL
        // events) when none matches, so `scan_end` always comes back.
        let columns = event_columns_of("e");
        let (condition, arrays) = crate::read_model::filter_condition(filter, 4).map_or((String::new(), Vec::new()), |(c, a)| (format!(" AND {c}"), a));
        let sql = format!(
            "WITH scan AS MATERIALIZED (SELECT coalesce( \
               (SELECT global_position FROM composable_rust.events WHERE global_position > $1 AND global_position <= $2 \
                ORDER BY global_position OFFSET $3 LIMIT 1), $2) AS scan_end) \
             SELECT scan.scan_end AS scan_end, {columns} FROM scan \
             LEFT JOIN composable_rust.events e ON e.global_position > $1 AND e.global_position <= scan.scan_end{condition} \
             ORDER BY e.global_position"
        );
        let mut query = sqlx::query(&sql).bind(to_i64(after.0)).bind(horizon).bind(i64::try_from(limit - 1).unwrap_or(i64::MAX));
        for values in arrays {
            query = query.bind(values);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        let mut scanned_to = after;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let scan_end: i64 = row.try_get("scan_end").map_err(|e| corrupt("filtered read", e))?;
            scanned_to = scanned_to.max(GlobalPosition(to_u64(scan_end)));
            if row.try_get::<Option<i64>, _>("global_position").map_err(|e| corrupt("event row", e))?.is_some() {
                events.push(event_from_row(row)?);
            }
        }
        Ok(FilteredPage { events, scanned_to })
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), EventStoreError> {
        let current = self.stream_version(&snapshot.stream_id).await?;
        snapshot.check_not_ahead(current)?;
        sqlx::query(
            "INSERT INTO composable_rust.snapshots (stream_id, version, state, taken_at) VALUES ($1, $2, $3, $4::text::timestamptz) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.version >= composable_rust.snapshots.version",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(to_i64(snapshot.version.0))
        .bind(snapshot.state.to_vec())
        .bind(snapshot.taken_at.to_rfc3339())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, EventStoreError> {
        let row = sqlx::query("SELECT version, state, to_char(taken_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS taken_at FROM composable_rust.snapshots WHERE stream_id = $1")
            .bind(stream_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let get_err = |e: sqlx::Error| corrupt("snapshot row", e);
        let taken_at: String = row.try_get("taken_at").map_err(get_err)?;
        let state: Vec<u8> = row.try_get("state").map_err(get_err)?;
        Ok(Some(Snapshot {
            stream_id: stream_id.clone(),
            version: Version(to_u64(row.try_get("version").map_err(get_err)?)),
            state: Bytes::from(state),
            taken_at: DateTime::parse_from_rfc3339(&taken_at).map_err(|e| corrupt("snapshot time", e))?.with_timezone(&Utc),
        }))
    }

    async fn pending_publications(&self, limit: usize) -> Result<Vec<PendingPublication>, EventStoreError> {
        let columns = event_columns_of("e");
        let rows = sqlx::query(&format!(
            "SELECT o.topic AS topic, {columns} FROM composable_rust.outbox o JOIN composable_rust.events e ON e.event_id = o.event_id \
             WHERE o.published_at IS NULL ORDER BY o.id LIMIT $1"
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let topic: String = row.try_get("topic").map_err(|e| corrupt("outbox row", e))?;
                Ok(PendingPublication { topic: Topic::new(&topic).map_err(|e| corrupt("outbox topic", e))?, event: event_from_row(row)?.event })
            })
            .collect()
    }

    async fn mark_published(&self, event_id: Uuid, topic: &Topic) -> Result<(), EventStoreError> {
        if let Some(marked) = match &self.marks {
            Some(marks) => marks.mark(event_id, topic).await,
            None => None,
        } {
            return marked;
        }
        sqlx::query("UPDATE composable_rust.outbox SET published_at = now() WHERE event_id = $1::text::uuid AND topic = $2 AND published_at IS NULL")
            .bind(event_id.to_string())
            .bind(topic.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn prune(&self, horizon: DateTime<Utc>) -> Result<PruneReport, EventStoreError> {
        let horizon = horizon.to_rfc3339();
        let outbox_rows = self
            .delete_in_batches(
                "DELETE FROM composable_rust.outbox WHERE id IN (SELECT id FROM composable_rust.outbox \
                 WHERE published_at IS NOT NULL AND published_at < $1::text::timestamptz LIMIT $2)",
                &horizon,
            )
            .await?;
        let inbox_marks = self
            .delete_in_batches(
                "DELETE FROM composable_rust.inbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM composable_rust.inbox \
                 WHERE processed_at < $1::text::timestamptz LIMIT $2))",
                &horizon,
            )
            .await?;
        Ok(PruneReport::new(outbox_rows, inbox_marks))
    }

    async fn claim_due_deadlines(&self, consumer: &str, now: DateTime<Utc>, lease: Duration, limit: usize) -> Result<Vec<ClaimedDeadline>, EventStoreError> {
        // One statement: the due rows are locked as they are chosen, skipping those another claimer
        // holds locked right now, and updated by the same statement. `ARRAY(SELECT ...)` makes the
        // choice run exactly once. `now` is the caller's clock, never the server's.
        let rows = sqlx::query(&format!(
            "UPDATE composable_rust.deadlines SET claimed_until = $4::text::timestamptz, claims = claims + 1 \
             WHERE id = ANY(ARRAY( \
               SELECT id FROM composable_rust.deadlines \
               WHERE consumer = $1 AND due_at <= $2::text::timestamptz AND (claimed_until IS NULL OR claimed_until <= $2::text::timestamptz) \
               ORDER BY due_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED)) \
             RETURNING {DEADLINE_COLUMNS}"
        ))
        .bind(consumer)
        .bind(pg_time(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(pg_time(lease_end(now, lease)))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut claimed: Vec<(i64, ClaimedDeadline)> = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>("seq").map_err(|e| corrupt("deadline row", e))?, deadline_from_row(row)?)))
            .collect::<Result<_, EventStoreError>>()?;
        // RETURNING gives no order: earliest due first, then in scheduling order, as chosen.
        claimed.sort_by_key(|(seq, c)| (c.deadline.due_at, *seq));
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    async fn complete_deadline(&self, id: Uuid) -> Result<(), EventStoreError> {
        sqlx::query("DELETE FROM composable_rust.deadlines WHERE id = $1::text::uuid").bind(id.to_string()).execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<StoredDeadline>, EventStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEADLINE_COLUMNS} FROM composable_rust.deadlines WHERE consumer = $1 AND ($2::text IS NULL OR instance = $2) \
             ORDER BY due_at, seq LIMIT $3"
        ))
        .bind(consumer)
        .bind(instance)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(|row| deadline_from_row(row).map(|c| c.deadline)).collect()
    }
}
