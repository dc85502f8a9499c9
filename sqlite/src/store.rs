//! The SQLite implementation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use composable_rust_core::event_store::{PruneReport, identical_retry};
use composable_rust_core::{
    AppendRequest, AppendResult, ClaimedDeadline, DeadlineChange, DeadlineOwner, EventFilter, EventMetadata, EventStore, EventStoreError, FilteredPage,
    GlobalPosition, PendingPublication, RecordedEvent, SerializedEvent, Snapshot, StoredDeadline, StreamId, Topic, Version,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{Location, SqliteConfig, SqliteError};
use crate::group_commit::{GroupCommit, GroupCommitStats};

/// The schema, applied by every opener.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How many rows one `DELETE` of [`EventStore::prune`] removes at most: a long prune then holds the
/// single writer connection only briefly at a time, and appends go on in between.
const PRUNE_BATCH: i64 = 10_000;

/// Prepared statements a connection keeps: group commit's multi-row statements take one shape per
/// row count (up to 64 each for events, stream versions, inbox marks and outbox intents, a few
/// padded ones for its `IN` lists) besides the single-row statements.
pub(crate) const WRITER_STATEMENT_CACHE: usize = 512;

/// An event store in one SQLite file (or in memory, see [`SqliteEventStore::in_memory`]). Cheap to
/// clone (pools and the group writer are shared).
#[derive(Debug, Clone)]
pub struct SqliteEventStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// The group writer that appends and `mark_published` go through; `None` when group commit is
    /// off (`max_group` 1): each write is then a transaction of its own.
    group: Option<Arc<GroupCommit>>,
    /// In memory only: a connection that is never used, which keeps the named in-memory database
    /// alive even while the pool replaces its connection.
    _keeper: Option<SqlitePool>,
}

/// SQLite's primary result codes that say "not now" rather than "never": `SQLITE_BUSY`,
/// `SQLITE_LOCKED`, `SQLITE_NOMEM`, `SQLITE_IOERR` and `SQLITE_FULL`.
const TRANSIENT_CODES: [i64; 5] = [5, 6, 7, 10, 13];
/// `SQLITE_FULL`: the disk (or the database's size limit) is full.
const SQLITE_FULL: i64 = 13;

/// The primary SQLite result code of a database error (sqlx reports the extended one).
fn primary_code(db: &dyn sqlx::error::DatabaseError) -> Option<i64> {
    db.code().and_then(|code| code.parse::<i64>().ok()).map(|code| code & 0xff)
}

/// A sqlx error as a store error: [`EventStoreError::Unavailable`] (retryable) when the database was
/// busy, out of memory or space, or could not be read or written; [`EventStoreError::Backend`]
/// otherwise. The sqlx error is the source either way.
pub(crate) fn map_err(e: sqlx::Error) -> EventStoreError {
    let (transient, full) = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => (true, false),
        sqlx::Error::Database(db) => {
            let code = primary_code(db.as_ref());
            let transient = code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) || db.message().contains("locked") || db.message().contains("busy");
            (transient, code == Some(SQLITE_FULL))
        }
        _ => (false, false),
    };
    if full {
        EventStoreError::unavailable(composable_rust_core::StoreCause::with_hint(e, "free disk space (or raise the database's size limit), then retry"))
    } else if transient {
        EventStoreError::unavailable(e)
    } else {
        EventStoreError::backend(e)
    }
}

/// A time as the schema stores it (`strftime('%Y-%m-%dT%H:%M:%fZ')`: UTC, milliseconds, fixed
/// width), so that text comparison is time comparison.
fn sqlite_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Runs `sql` (a `DELETE` of at most `PRUNE_BATCH` rows older than its first parameter, the limit
/// being the second) until it deletes fewer than a batch; the number of rows deleted in all.
async fn delete_in_batches(pool: &SqlitePool, sql: &str, horizon: &str) -> Result<u64, EventStoreError> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query(sql).bind(horizon).bind(PRUNE_BATCH).execute(pool).await.map_err(map_err)?.rows_affected();
        deleted += done;
        if done < PRUNE_BATCH.unsigned_abs() {
            return Ok(deleted);
        }
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

pub(crate) const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, event_type, payload, metadata";

pub(crate) fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent, EventStoreError> {
    let get_err = |e: sqlx::Error| corrupt("event row", e);
    let id_bytes: Vec<u8> = row.try_get("event_id").map_err(get_err)?;
    let event_id = Uuid::from_slice(&id_bytes).map_err(|e| corrupt("event id", e))?;
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

/// The columns [`deadline_from_row`] reads.
// `rowid` grows with each insert: the scheduling order of deadlines due together.
const DEADLINE_COLUMNS: &str = "id, consumer, instance, name, due_at, payload, fired, claims, rowid AS seq";

/// A deadline time as the schema stores it: microseconds since the Unix epoch (UTC), exact for
/// every time the suite compares (millisecond precision and finer).
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The end of a claim taken at `now` for `lease` (saturating: a huge lease holds "forever").
fn lease_end(now: DateTime<Utc>, lease: Duration) -> i64 {
    micros(now).saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

/// A deadline row, with whether it fired and how often it was claimed.
fn deadline_from_row(row: &SqliteRow) -> Result<ClaimedDeadline, EventStoreError> {
    let get_err = |e: sqlx::Error| corrupt("deadline row", e);
    let id_bytes: Vec<u8> = row.try_get("id").map_err(get_err)?;
    let id = Uuid::from_slice(&id_bytes).map_err(|e| corrupt("deadline id", e))?;
    let due_us: i64 = row.try_get("due_at").map_err(get_err)?;
    let due_at = DateTime::from_timestamp_micros(due_us).ok_or_else(|| corrupt(&format!("due time of deadline {id}"), due_us))?;
    let payload: Vec<u8> = row.try_get("payload").map_err(get_err)?;
    let claims: i64 = row.try_get("claims").map_err(get_err)?;
    Ok(ClaimedDeadline {
        deadline: StoredDeadline {
            id,
            owner: DeadlineOwner::new(row.try_get::<String, _>("consumer").map_err(get_err)?, row.try_get::<String, _>("instance").map_err(get_err)?),
            name: row.try_get("name").map_err(get_err)?,
            due_at,
            payload: Bytes::from(payload),
        },
        fired: row.try_get("fired").map_err(get_err)?,
        claims: u32::try_from(claims).unwrap_or(u32::MAX),
    })
}

/// Applies one deadline change of an append inside its transaction (after all its checks passed).
/// A `Fire` of a deadline that is not pending is [`EventStoreError::DeadlineNotPending`]; the caller
/// then drops the transaction, which rolls the whole append back.
pub(crate) async fn apply_deadline_change(conn: &mut sqlx::SqliteConnection, change: &DeadlineChange) -> Result<(), EventStoreError> {
    const DELETE_PENDING: &str = "DELETE FROM deadlines WHERE consumer = ? AND instance = ? AND name = ? AND fired = 0";
    match change {
        DeadlineChange::Schedule(d) => {
            sqlx::query(DELETE_PENDING)
                .bind(d.owner.consumer.as_str())
                .bind(d.owner.instance.as_str())
                .bind(d.name.as_str())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            // The same step scheduling again (same id) replaces its own row.
            sqlx::query("DELETE FROM deadlines WHERE id = ?").bind(d.id.as_bytes().to_vec()).execute(&mut *conn).await.map_err(map_err)?;
            sqlx::query("INSERT INTO deadlines (id, consumer, instance, name, due_at, payload) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(d.id.as_bytes().to_vec())
                .bind(d.owner.consumer.as_str())
                .bind(d.owner.instance.as_str())
                .bind(d.name.as_str())
                .bind(micros(d.due_at))
                .bind(d.payload.to_vec())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        DeadlineChange::Cancel { owner, name } => {
            sqlx::query(DELETE_PENDING)
                .bind(owner.consumer.as_str())
                .bind(owner.instance.as_str())
                .bind(name.as_str())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        DeadlineChange::Fire { id } => {
            let fired = sqlx::query("UPDATE deadlines SET fired = 1 WHERE id = ? AND fired = 0")
                .bind(id.as_bytes().to_vec())
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

/// Marks one outbox entry published, on its own (group commit off, or its writer gone).
pub(crate) async fn mark_published_on(writer: &SqlitePool, event_id: Uuid, topic: &Topic) -> Result<(), EventStoreError> {
    sqlx::query("UPDATE outbox SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE event_id = ? AND topic = ? AND published_at IS NULL")
        .bind(&event_id.as_bytes()[..])
        .bind(topic.as_str())
        .execute(writer)
        .await
        .map_err(map_err)?;
    Ok(())
}

impl SqliteEventStore {
    /// Opens the database a composable-rust SQLite URL names (`sqlite:PATH`, `sqlite::memory:`; see
    /// [`SqliteConfig::from_url`]), creating the file and applying the schema if needed.
    pub async fn connect(url: &str) -> Result<Self, SqliteError> {
        Self::connect_with(SqliteConfig::from_url(url)?).await
    }

    /// Opens (creating if needed) the database file at `path` and applies the schema: the same as
    /// `connect_with(SqliteConfig::new(path))`. The path `:memory:` opens
    /// [`SqliteEventStore::in_memory`]; an empty path is [`SqliteError::EmptyPath`].
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self, SqliteError> {
        Self::connect_with(SqliteConfig::new(path)).await
    }

    /// A store in a private in-memory database of its own, with the schema applied: for tests and
    /// demos. Its clones share it; it is gone when the last clone is dropped. Reads and writes share
    /// one connection (an in-memory database has no WAL to read beside the writer). The same as
    /// `connect_with(SqliteConfig::in_memory())`.
    pub async fn in_memory() -> Result<Self, SqliteError> {
        Self::connect_with(SqliteConfig::in_memory()).await
    }

    /// Opens the database of `config` (a file is created if missing) and applies the schema.
    pub async fn connect_with(config: SqliteConfig) -> Result<Self, SqliteError> {
        let path = match config.location() {
            Location::Memory => return Self::open_in_memory(&config).await,
            Location::File(path) => path,
        };
        let path_text = path.display().to_string();
        if path.as_os_str().is_empty() {
            return Err(SqliteError::EmptyPath { url: path_text });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .statement_cache_capacity(WRITER_STATEMENT_CACHE)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(config.busy_timeout());
        let open_err = |e: sqlx::Error| SqliteError::Open { path: path_text.clone(), reason: e.to_string() };
        // SQLite has no migration lock, and switching a new file to WAL needs it exclusively:
        // processes opening a new file together can see `database is locked` or race to record the
        // same migration. The loser retries and then finds the schema applied (checksums verified).
        let is_race = |reason: &str| reason.contains("locked") || reason.contains("_sqlx_migrations");
        let mut attempt: u32 = 0;
        let writer = loop {
            // With group commit the writer task takes the connection once per group: no ping first
            // (an in-process SQLite connection has no peer to lose). Group commit off keeps the
            // pool's default, as before it.
            let pool_options = SqlitePoolOptions::new().max_connections(1).test_before_acquire(config.max_group() == 1);
            let result = match pool_options.connect_with(options.clone()).await {
                Ok(writer) => match MIGRATOR.run(&writer).await {
                    Ok(()) => Ok(writer),
                    Err(e) => Err(SqliteError::Migrate { path: path_text.clone(), reason: e.to_string() }),
                },
                Err(e) => Err(open_err(e)),
            };
            match result {
                Ok(writer) => break writer,
                Err(SqliteError::Open { reason, .. } | SqliteError::Migrate { reason, .. }) if attempt < 10 && is_race(&reason) => {
                    attempt += 1;
                    tracing::debug!(path = %path_text, attempt, %reason, "another process is opening the file; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        };
        let reader = SqlitePoolOptions::new().max_connections(config.reader_connections()).connect_with(options.read_only(true)).await.map_err(open_err)?;
        Ok(Self::with_pools(writer, reader, None, &config))
    }

    fn with_pools(writer: SqlitePool, reader: SqlitePool, keeper: Option<SqlitePool>, config: &SqliteConfig) -> Self {
        let group = (config.max_group() > 1).then(|| Arc::new(GroupCommit::start(writer.clone(), config.max_group())));
        Self { writer, reader, group, _keeper: keeper }
    }

    async fn open_in_memory(config: &SqliteConfig) -> Result<Self, SqliteError> {
        // A named shared-cache database lives as long as one connection to it is open: the keeper
        // holds one, so a connection the pool replaces finds the same data, not an empty database.
        let name = format!("file:composable-rust-{}", Uuid::new_v4().simple());
        let options = SqliteConnectOptions::new()
            .filename(&name)
            .in_memory(true)
            .shared_cache(true)
            .statement_cache_capacity(WRITER_STATEMENT_CACHE)
            .busy_timeout(config.busy_timeout());
        let single = || SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
        let open_err = |e: sqlx::Error| SqliteError::Open { path: ":memory:".into(), reason: e.to_string() };
        let keeper = single().connect_with(options.clone()).await.map_err(open_err)?;
        let pool = single().connect_with(options).await.map_err(open_err)?;
        MIGRATOR.run(&pool).await.map_err(|e| SqliteError::Migrate { path: ":memory:".into(), reason: e.to_string() })?;
        Ok(Self::with_pools(pool.clone(), pool, Some(keeper), config))
    }

    /// What group commit has combined since the store was opened (all zero when it is off, with
    /// [`SqliteConfig::with_max_group`] `1`).
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use composable_rust_sqlite::SqliteEventStore;
    ///
    /// let store = SqliteEventStore::in_memory().await?;
    /// let stats = store.group_commit_stats();
    /// assert_eq!((stats.transactions, stats.appends), (0, 0));
    /// # Ok(()) }
    /// ```
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.group.as_ref().map(|g| g.stats()).unwrap_or_default()
    }

    /// Events stored in all.
    pub async fn event_count(&self) -> Result<u64, EventStoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.reader).await.map_err(map_err)?;
        Ok(to_u64(n))
    }

    /// An append as a transaction of its own on the single writer connection (group commit off, or
    /// its writer gone). `BEGIN IMMEDIATE` takes the file's write lock first (waiting up to the busy
    /// timeout), so that another process's writer committing between this transaction's reads and
    /// its writes cannot make it fail.
    pub(crate) async fn append_alone(writer: &SqlitePool, request: &AppendRequest) -> Result<AppendResult, EventStoreError> {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let result = Self::append_on(&mut tx, request).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(result)
    }

    /// The writes of one append on `tx`, inside a transaction (or savepoint) the caller commits, or
    /// rolls back when this fails.
    pub(crate) async fn append_on(tx: &mut sqlx::SqliteConnection, request: &AppendRequest) -> Result<AppendResult, EventStoreError> {
        if let Some(earlier) = Self::earlier_append(&mut *tx, request).await? {
            return Ok(earlier);
        }
        let actual: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = ?")
            .bind(request.stream_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let actual = Version(actual.map_or(0, to_u64));
        if !request.expected_version.accepts(actual) {
            return Err(EventStoreError::ConcurrencyConflict { stream_id: request.stream_id.clone(), expected: request.expected_version, actual });
        }
        if let Some(mark) = &request.inbox {
            let inserted = sqlx::query("INSERT INTO inbox (consumer, event_id) VALUES (?, ?) ON CONFLICT (consumer, event_id) DO NOTHING")
                .bind(mark.consumer.as_str())
                .bind(mark.event_id.as_bytes().to_vec())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            if inserted.rows_affected() == 0 {
                return Err(EventStoreError::AlreadyProcessed { consumer: mark.consumer.clone(), event_id: mark.event_id });
            }
        }
        let mut first_position = None;
        let mut version = actual;
        for event in &request.events {
            version = version.next();
            let metadata = serde_json::to_string(&event.metadata)
                .map_err(|e| EventStoreError::InvalidRequest { reason: format!("metadata of {}: {e}", event.event_id) })?;
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO events (stream_id, stream_version, event_id, event_type, payload, metadata) VALUES (?, ?, ?, ?, ?, ?) RETURNING global_position",
            )
            .bind(request.stream_id.as_str())
            .bind(to_i64(version.0))
            .bind(event.event_id.as_bytes().to_vec())
            .bind(event.event_type.as_str())
            .bind(event.data.to_vec())
            .bind(metadata)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            first_position.get_or_insert(position);
        }
        sqlx::query("INSERT INTO streams (stream_id, version) VALUES (?, ?) ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version")
            .bind(request.stream_id.as_str())
            .bind(to_i64(version.0))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for intent in &request.outbox {
            sqlx::query("INSERT INTO outbox (event_id, topic) VALUES (?, ?) ON CONFLICT (event_id, topic) DO NOTHING")
                .bind(intent.event_id.as_bytes().to_vec())
                .bind(intent.topic.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        // Last, once every check passed; a refused `Fire` makes the caller roll everything back.
        for change in &request.deadlines {
            apply_deadline_change(&mut *tx, change).await?;
        }
        Ok(AppendResult {
            first_version: actual.next(),
            next_expected_version: version,
            first_position: GlobalPosition(first_position.map_or(0, to_u64)),
            duplicate: false,
        })
    }

    /// If the request's events are all stored, identically and consecutively in its stream, the
    /// result of that earlier append; an id stored with other content is an error.
    async fn earlier_append(conn: &mut sqlx::SqliteConnection, request: &AppendRequest) -> Result<Option<AppendResult>, EventStoreError> {
        let placeholders = vec!["?"; request.events.len()].join(",");
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({placeholders}) ORDER BY global_position");
        let mut query = sqlx::query(&sql);
        for e in &request.events {
            query = query.bind(e.event_id.as_bytes().to_vec());
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(map_err)?;
        let stored: Vec<RecordedEvent> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        identical_retry(request, &stored)
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    fn read_model_store(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn composable_rust_core::ReadModelStore>> {
        Some(self)
    }

    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        request.validate()?;
        let span = tracing::debug_span!("append", store = "sqlite", stream = %request.stream_id, events = request.events.len());
        match &self.group {
            Some(group) => group.append(request).instrument(span).await,
            None => Self::append_alone(&self.writer, &request).instrument(span).await,
        }
    }

    async fn read_stream(&self, stream_id: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version LIMIT ?"))
            .bind(stream_id.as_str())
            .bind(to_i64(from.0))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(|r| event_from_row(r).map(|e| e.event)).collect()
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version, EventStoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = ?")
            .bind(stream_id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(Version(v.map_or(0, to_u64)))
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?"))
            .bind(to_i64(after.0))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn head(&self) -> Result<GlobalPosition, EventStoreError> {
        // Positions follow commit order (one writer at a time holds the file's write lock), so the
        // highest committed one is readable without a gap.
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events").fetch_one(&self.reader).await.map_err(map_err)?;
        Ok(GlobalPosition(to_u64(head)))
    }

    async fn read_all_filtered(&self, after: GlobalPosition, limit: usize, filter: &EventFilter) -> Result<FilteredPage, EventStoreError> {
        if limit == 0 {
            return Ok(FilteredPage { events: Vec::new(), scanned_to: after });
        }
        // One statement, so one snapshot: `scan_end` is the `limit`-th event after `after`, or the
        // head when fewer follow (all committed, in commit order); the rows are the events up to it
        // that `filter` matches. A LEFT JOIN keeps one row (of NULL events) when none matches.
        let columns = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let (condition, binds) = crate::read_model::filter_condition(filter, 3).map_or((String::new(), Vec::new()), |(c, b)| (format!(" AND {c}"), b));
        let sql = format!(
            "WITH scan AS (SELECT coalesce( \
               (SELECT global_position FROM events WHERE global_position > ?1 ORDER BY global_position LIMIT 1 OFFSET ?2), \
               (SELECT max(global_position) FROM events)) AS scan_end) \
             SELECT scan.scan_end AS scan_end, {columns} FROM scan \
             LEFT JOIN events e ON e.global_position > ?1 AND e.global_position <= scan.scan_end{condition} \
             ORDER BY e.global_position"
        );
        let mut query = sqlx::query(&sql).bind(to_i64(after.0)).bind(i64::try_from(limit - 1).unwrap_or(i64::MAX));
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.reader).await.map_err(map_err)?;
        let mut scanned_to = after;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let scan_end: Option<i64> = row.try_get("scan_end").map_err(|e| corrupt("filtered read", e))?;
            scanned_to = scanned_to.max(GlobalPosition(scan_end.map_or(0, to_u64)));
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
            "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.version >= snapshots.version",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(to_i64(snapshot.version.0))
        .bind(snapshot.state.to_vec())
        .bind(snapshot.taken_at.to_rfc3339())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, EventStoreError> {
        let row = sqlx::query("SELECT version, state, taken_at FROM snapshots WHERE stream_id = ?")
            .bind(stream_id.as_str())
            .fetch_optional(&self.reader)
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
        let columns = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT o.topic AS topic, {columns} FROM outbox o JOIN events e ON e.event_id = o.event_id WHERE o.published_at IS NULL ORDER BY o.id LIMIT ?"
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
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
        match &self.group {
            Some(group) => group.mark_published(event_id, topic.clone()).await,
            None => mark_published_on(&self.writer, event_id, topic).await,
        }
    }

    async fn prune(&self, horizon: DateTime<Utc>) -> Result<PruneReport, EventStoreError> {
        let horizon = sqlite_time(horizon);
        let outbox_rows = delete_in_batches(
            &self.writer,
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?)",
            &horizon,
        )
        .await?;
        let inbox_marks =
            delete_in_batches(&self.writer, "DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox WHERE processed_at < ? LIMIT ?)", &horizon).await?;
        Ok(PruneReport::new(outbox_rows, inbox_marks))
    }

    async fn claim_due_deadlines(&self, consumer: &str, now: DateTime<Utc>, lease: Duration, limit: usize) -> Result<Vec<ClaimedDeadline>, EventStoreError> {
        // One statement, so one write transaction: SQLite's write lock (one writer connection here,
        // the file lock across processes) makes the claim exclusive.
        let rows = sqlx::query(&format!(
            "UPDATE deadlines SET claimed_until = ?, claims = claims + 1 WHERE id IN ( \
               SELECT id FROM deadlines WHERE consumer = ? AND due_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?) \
               ORDER BY due_at, rowid LIMIT ?) \
             RETURNING {DEADLINE_COLUMNS}"
        ))
        .bind(lease_end(now, lease))
        .bind(consumer)
        .bind(micros(now))
        .bind(micros(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.writer)
        .await
        .map_err(map_err)?;
        let mut claimed: Vec<(i64, ClaimedDeadline)> = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>("seq").map_err(|e| corrupt("deadline row", e))?, deadline_from_row(row)?)))
            .collect::<Result<_, EventStoreError>>()?;
        // RETURNING gives no order: earliest due first, then in scheduling order, as selected.
        claimed.sort_by_key(|(seq, c)| (c.deadline.due_at, *seq));
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    async fn complete_deadline(&self, id: Uuid) -> Result<(), EventStoreError> {
        sqlx::query("DELETE FROM deadlines WHERE id = ?").bind(id.as_bytes().to_vec()).execute(&self.writer).await.map_err(map_err)?;
        Ok(())
    }

    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<StoredDeadline>, EventStoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match instance {
            Some(instance) => {
                sqlx::query(&format!("SELECT {DEADLINE_COLUMNS} FROM deadlines WHERE consumer = ? AND instance = ? ORDER BY due_at, rowid LIMIT ?"))
                    .bind(consumer)
                    .bind(instance)
                    .bind(limit)
                    .fetch_all(&self.reader)
                    .await
            }
            None => {
                sqlx::query(&format!("SELECT {DEADLINE_COLUMNS} FROM deadlines WHERE consumer = ? ORDER BY due_at, rowid LIMIT ?"))
                    .bind(consumer)
                    .bind(limit)
                    .fetch_all(&self.reader)
                    .await
            }
        }
        .map_err(map_err)?;
        rows.iter().map(|row| deadline_from_row(row).map(|c| c.deadline)).collect()
    }
}
