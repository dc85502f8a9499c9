//! The [`EventStore`] trait: append-only streams with optimistic concurrency, a global commit-ordered
//! log, snapshots, and a transactional outbox.
//!
//! Guarantees every implementation must give (checked by the conformance suite in
//! `composable-rust-testing`):
//! - an append is atomic: all its events are stored with consecutive versions, or none is;
//! - the expected version is checked atomically with the append; a mismatch is
//!   [`EventStoreError::ConcurrencyConflict`] carrying the stream's actual version;
//! - event ids are unique: appending again events whose ids are stored with the same content is an
//!   idempotent success (`AppendResult::duplicate`), with different content it is
//!   [`EventStoreError::EventIdReused`];
//! - [`EventStore::read_all`] returns events in commit order and never skips one that commits late;
//! - outbox intents passed with an append are stored in the same atomic step and stay pending until
//!   [`EventStore::mark_published`];
//! - [`EventStore::prune`] deletes only outbox entries published, and inbox marks recorded, before its
//!   horizon: never a pending outbox entry, an event or a snapshot.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::deadline::{ClaimedDeadline, DeadlineChange, StoredDeadline};
use crate::event::SerializedEvent;
use crate::read_model::{EventFilter, FilteredPage};
use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, Version};
use crate::topic::Topic;

/// Largest payload an event may carry in an append (8 MiB). Stores refuse larger ones with
/// [`EventStoreError::PayloadTooLarge`] rather than fail deep inside the database.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

/// A request to publish one appended event to one topic, stored with the append (transactional outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxIntent {
    /// Where the event is to be published.
    pub topic: Topic,
    /// Which event of the append.
    pub event_id: Uuid,
}

/// "Consumer `consumer` has handled event `event_id`": an inbox row written in the same atomic step
/// as the consumer's own append, so that a redelivered event cannot be applied twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxMark {
    /// The consumer (e.g. the saga's name).
    pub consumer: String,
    /// The event it handled.
    pub event_id: Uuid,
}

/// Everything one append writes atomically.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// Target stream.
    pub stream_id: StreamId,
    /// Optimistic concurrency check.
    pub expected_version: ExpectedVersion,
    /// Events in order; they get consecutive versions.
    pub events: Vec<SerializedEvent>,
    /// Publish intents stored in the same step (may be empty).
    pub outbox: Vec<OutboxIntent>,
    /// An inbox row stored in the same step; if the consumer already handled that event, the whole
    /// append is refused with [`EventStoreError::AlreadyProcessed`].
    pub inbox: Option<InboxMark>,
    /// Deadline changes stored in the same step, applied in order (may be empty).
    pub deadlines: Vec<DeadlineChange>,
}

impl AppendRequest {
    /// An append without outbox intents or inbox mark.
    pub fn new(stream_id: StreamId, expected_version: ExpectedVersion, events: Vec<SerializedEvent>) -> Self {
        Self { stream_id, expected_version, events, outbox: Vec::new(), inbox: None, deadlines: Vec::new() }
    }

    /// Adds an inbox mark.
    #[must_use]
    pub fn with_inbox(mut self, consumer: impl Into<String>, event_id: Uuid) -> Self {
        self.inbox = Some(InboxMark { consumer: consumer.into(), event_id });
        self
    }

    /// Adds deadline changes (applied in order, atomically with the append).
    #[must_use]
    pub fn with_deadlines(mut self, changes: impl IntoIterator<Item = DeadlineChange>) -> Self {
        self.deadlines.extend(changes);
        self
    }

    /// Checks what every store checks before touching storage: at least one event, payloads within
    /// [`MAX_EVENT_PAYLOAD_BYTES`], outbox intents naming events of this append, deadlines with an
    /// owner and a name.
    pub fn validate(&self) -> Result<(), EventStoreError> {
        if self.events.is_empty() {
            return Err(EventStoreError::InvalidRequest { reason: format!("append to {} carries no events", self.stream_id) });
        }
        for e in &self.events {
            if e.data.len() > MAX_EVENT_PAYLOAD_BYTES {
                return Err(EventStoreError::PayloadTooLarge { event_id: e.event_id, size: e.data.len(), limit: MAX_EVENT_PAYLOAD_BYTES });
            }
            if e.event_type.is_empty() {
                return Err(EventStoreError::InvalidRequest { reason: format!("event {} has an empty event type", e.event_id) });
            }
        }
        if self.inbox.as_ref().is_some_and(|m| m.consumer.is_empty()) {
            return Err(EventStoreError::InvalidRequest { reason: "inbox mark with an empty consumer name".into() });
        }
        for change in &self.deadlines {
            let (owner, name) = match change {
                DeadlineChange::Schedule(d) => {
                    if d.payload.len() > MAX_EVENT_PAYLOAD_BYTES {
                        return Err(EventStoreError::InvalidRequest {
                            reason: format!("deadline {} payload is {} bytes, the limit is {MAX_EVENT_PAYLOAD_BYTES}", d.name, d.payload.len()),
                        });
                    }
                    (&d.owner, d.name.as_str())
                }
                DeadlineChange::Cancel { owner, name } => (owner, name.as_str()),
                DeadlineChange::Fire { .. } => continue,
            };
            if owner.consumer.is_empty() || owner.instance.is_empty() || name.is_empty() {
                return Err(EventStoreError::InvalidRequest {
                    reason: format!("deadline change with an empty consumer, instance or name ({owner:?}, {name:?})"),
                });
            }
        }
        for intent in &self.outbox {
            if !self.events.iter().any(|e| e.event_id == intent.event_id) {
                return Err(EventStoreError::InvalidRequest {
                    reason: format!("outbox intent for {} names event {} which is not in this append", intent.topic, intent.event_id),
                });
            }
        }
        Ok(())
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the first appended event.
    pub first_version: Version,
    /// Version of the stream after the append (= version of the last event).
    pub next_expected_version: Version,
    /// Global position of the first appended event.
    pub first_position: GlobalPosition,
    /// True when every event was already stored with the same content (idempotent retry): nothing new
    /// was written.
    pub duplicate: bool,
}

/// An event with its place in the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global, commit-ordered position.
    pub position: GlobalPosition,
    /// The event, with `stream_id` and `stream_version` set.
    pub event: SerializedEvent,
}

/// A stored snapshot of a stream's state at a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: StreamId,
    /// The version the state reflects.
    pub version: Version,
    /// The encoded state.
    pub state: Bytes,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

impl Snapshot {
    /// Refuses a snapshot taken at a version the stream (now at `current`) has not reached: every
    /// store applies this rule before saving.
    pub fn check_not_ahead(&self, current: Version) -> Result<(), EventStoreError> {
        if self.version > current {
            return Err(EventStoreError::InvalidRequest {
                reason: format!("snapshot of {} at version {} is ahead of the stream (version {current})", self.stream_id, self.version),
            });
        }
        Ok(())
    }
}

/// An outbox entry not yet marked published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPublication {
    /// Where to publish.
    pub topic: Topic,
    /// What to publish (as stored).
    pub event: SerializedEvent,
}

/// The underlying error of a store failure (see [`Cause`](crate::cause::Cause)).
pub use crate::cause::Cause as StoreCause;

/// Errors of an event store. New variants may be added: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventStoreError {
    /// The stream was not at the expected version. Not retryable as is: reload the stream, decide
    /// again, append with the new version.
    #[error("concurrency conflict on stream {stream_id}: expected version {expected}, actual {actual}; reload the stream and retry the command")]
    ConcurrencyConflict {
        /// The stream.
        stream_id: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: Version,
    },
    /// An event id is already stored with different content.
    #[error("event id {event_id} is already stored (in stream {stream_id}) with different content: event ids must be unique per event")]
    EventIdReused {
        /// The reused id.
        event_id: Uuid,
        /// Where the stored event lives.
        stream_id: StreamId,
    },
    /// The consumer named in the append's inbox mark has already handled that event: nothing was
    /// stored. Treat the delivery as a duplicate.
    #[error("consumer {consumer} has already processed event {event_id}; the redelivery is a duplicate")]
    AlreadyProcessed {
        /// The consumer.
        consumer: String,
        /// The event.
        event_id: Uuid,
    },
    /// A payload exceeds the documented limit.
    #[error("event {event_id} payload is {size} bytes, the limit is {limit}: store large blobs elsewhere and reference them")]
    PayloadTooLarge {
        /// The event.
        event_id: Uuid,
        /// Its payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request itself is wrong (no events, an outbox intent for an unknown event, ...).
    #[error("invalid append: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// Stored data could not be read back (corrupt row, unknown format).
    #[error("stored data is corrupt: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// The append marks a deadline fired ([`DeadlineChange::Fire`]) that is not pending any more: it
    /// was cancelled, replaced, or fired by another worker. Nothing was stored; drop the firing.
    #[error("deadline {id} is not pending any more (cancelled, replaced or already fired); the firing is dropped")]
    DeadlineNotPending {
        /// The deadline.
        id: Uuid,
    },
    /// The store could not be reached or timed out; retrying later may succeed.
    #[error("event store unavailable: {source}; check that the database is running and reachable, then retry")]
    Unavailable {
        /// The client's error.
        #[source]
        source: StoreCause,
    },
    /// Any other backend failure; retrying the same request will most likely fail the same way.
    #[error("event store failure: {source}")]
    Backend {
        /// The client's error.
        #[source]
        source: StoreCause,
    },
}

impl EventStoreError {
    /// [`EventStoreError::Unavailable`] caused by `source` (a client error, or [`StoreCause::msg`]).
    pub fn unavailable(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EventStoreError::Unavailable { source: StoreCause::new(source) }
    }

    /// [`EventStoreError::Backend`] caused by `source` (a client error, or [`StoreCause::msg`]).
    pub fn backend(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EventStoreError::Backend { source: StoreCause::new(source) }
    }

    /// The underlying client error, for the variants that have one.
    pub fn cause(&self) -> Option<&StoreCause> {
        match self {
            EventStoreError::Unavailable { source } | EventStoreError::Backend { source } => Some(source),
            _ => None,
        }
    }

    /// Whether retrying the same request later may succeed. A concurrency conflict is not retryable as
    /// is (the command must be decided again on fresh state).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EventStoreError::Unavailable { .. })
    }
}

/// What [`EventStore::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Outbox entries that had been marked published before the horizon.
    pub outbox_rows: u64,
    /// Inbox marks recorded before the horizon.
    pub inbox_marks: u64,
}

impl PruneReport {
    /// A report of `outbox_rows` outbox entries and `inbox_marks` inbox marks deleted.
    pub fn new(outbox_rows: u64, inbox_marks: u64) -> Self {
        Self { outbox_rows, inbox_marks }
    }
}

/// An append-only event store. Object-safe: use it as `Arc<dyn EventStore>`.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events (and outbox intents) atomically, checking the expected version.
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError>;

    /// Reads a stream's events with version `>= from`, in version order, at most `limit` of them.
    async fn read_stream(&self, stream_id: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError>;

    /// The stream's current version (0 if it does not exist).
    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version, EventStoreError>;

    /// Reads the global log from position `> after`, in commit order, at most `limit` events.
    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError>;

    /// Stores a snapshot, replacing an older one of the same stream.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), EventStoreError>;

    /// The latest snapshot of a stream, if any.
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, EventStoreError>;

    /// Outbox entries not yet marked published, oldest first, at most `limit`.
    async fn pending_publications(&self, limit: usize) -> Result<Vec<PendingPublication>, EventStoreError>;

    /// Marks an outbox entry published. Marking an unknown or already published entry is not an error.
    async fn mark_published(&self, event_id: Uuid, topic: &Topic) -> Result<(), EventStoreError>;

    /// Retention: deletes the outbox entries marked published before `horizon` and the inbox marks
    /// recorded before `horizon`, and says how many of each. Published outbox entries and inbox marks
    /// are otherwise kept forever; call this periodically (e.g. with `now - 7 days`) to bound them.
    ///
    /// Never deletes a pending outbox entry (whatever its age), an event or a snapshot. Times are
    /// those the store recorded when the entry was marked published or the mark was stored: the
    /// database server's clock for PostgreSQL, this machine's for SQLite and the in-memory store.
    ///
    /// **What pruning an inbox mark means for de-duplication:** the inbox no longer remembers that
    /// the consumer handled that event. A redelivery of an event whose mark was pruned, i.e. one
    /// handled before `horizon`, is not refused with [`EventStoreError::AlreadyProcessed`] any more:
    /// an append carrying the same mark is stored (only appends with the very same event ids are still
    /// recognised, as idempotent retries). Choose a horizon older than the longest time a bus may
    /// redeliver an event (its retention or redelivery window), so that no redelivery is still
    /// possible for the marks that go.
    async fn prune(&self, horizon: DateTime<Utc>) -> Result<PruneReport, EventStoreError>;

    /// Claims up to `limit` deadlines of `consumer` due at `now` (`due_at <= now`) that no other
    /// worker holds: each is held by this caller until `now + lease`, then claimable again (a worker
    /// that died releases its claims that way). Oldest due first, found by an index on the due
    /// time. Concurrent callers (threads, processes) never get the same deadline while a claim holds
    /// (PostgreSQL: `FOR UPDATE SKIP LOCKED`). `now` comes from the caller's clock, so a test clock
    /// drives it.
    async fn claim_due_deadlines(
        &self,
        consumer: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedDeadline>, EventStoreError>;

    /// Ends a deadline (fired and handled, or given up): deletes it. Unknown ids are not an error.
    async fn complete_deadline(&self, id: Uuid) -> Result<(), EventStoreError>;

    /// The deadlines of `consumer` not completed yet (pending or fired), earliest due first, at most
    /// `limit`; only those of `instance` when given. For inspection and for workers to sleep until
    /// the next one.
    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<StoredDeadline>, EventStoreError>;

    /// This store's read-model side, when it keeps projections' documents too (every store of the
    /// project does: `Some(self)`); wrappers return their inner store's. Lets code holding an
    /// `Arc<dyn EventStore>` (from `composable_rust::store::connect(url)`) run projections in the
    /// same database, so a read model's update and its checkpoint commit together with nothing
    /// else to configure.
    fn read_model_store(self: Arc<Self>) -> Option<Arc<dyn crate::read_model::ReadModelStore>> {
        None
    }

    /// The position of the last event [`EventStore::read_all`] can return now (0 for an empty
    /// store). The default pages through the whole log; stores answer it with an index.
    async fn head(&self) -> Result<GlobalPosition, EventStoreError> {
        let mut after = GlobalPosition(0);
        loop {
            let page = self.read_all(after, 4096).await?;
            match page.last() {
                Some(last) => after = last.position,
                None => return Ok(after),
            }
        }
    }

    /// Like [`EventStore::read_all`], keeping only the events `filter` matches: looks at up to
    /// `limit` events after `after` and says how far it looked ([`FilteredPage::scanned_to`]), with
    /// the same no-gap rule. The default filters here; SQL stores filter in the query.
    async fn read_all_filtered(&self, after: GlobalPosition, limit: usize, filter: &EventFilter) -> Result<FilteredPage, EventStoreError> {
        let page = self.read_all(after, limit).await?;
        let scanned_to = page.last().map_or(after, |e| e.position);
        Ok(FilteredPage { events: page.into_iter().filter(|e| filter.matches(e)).collect(), scanned_to })
    }
}

/// Decides what an append whose event ids are already (partly) stored is: `stored` holds those
/// stored events, ordered by position. No stored event: a fresh append (`Ok(None)`). Every event
/// stored identically, in order, consecutively, in the same stream: an idempotent retry, answered
/// with the original result (`duplicate: true`). Anything else: [`EventStoreError::EventIdReused`].
/// Every store uses this, so the rule is the same everywhere.
pub fn identical_retry(request: &AppendRequest, stored: &[RecordedEvent]) -> Result<Option<AppendResult>, EventStoreError> {
    let (Some(first), Some(last)) = (stored.first(), stored.last()) else { return Ok(None) };
    let reused = |id: Uuid, stream: &Option<StreamId>| EventStoreError::EventIdReused {
        event_id: id,
        stream_id: stream.clone().unwrap_or_else(|| request.stream_id.clone()),
    };
    for s in stored {
        let asked = request.events.iter().find(|e| e.event_id == s.event.event_id);
        if asked.is_none_or(|a| !a.same_content(&s.event)) || s.event.stream_id.as_ref() != Some(&request.stream_id) {
            return Err(reused(s.event.event_id, &s.event.stream_id));
        }
    }
    let in_order = stored.len() == request.events.len() && stored.iter().zip(&request.events).all(|(s, e)| s.event.event_id == e.event_id);
    let consecutive = stored.windows(2).all(|w| w[1].event.stream_version == w[0].event.stream_version.map(Version::next));
    if !in_order || !consecutive {
        return Err(reused(request.events[0].event_id, &Some(request.stream_id.clone())));
    }
    Ok(Some(AppendResult {
        first_version: first.event.stream_version.unwrap_or_default(),
        next_expected_version: last.event.stream_version.unwrap_or_default(),
        first_position: first.position,
        duplicate: true,
    }))
}

/// Reads a whole stream from `from`, page by page.
pub async fn read_stream_to_end(store: &dyn EventStore, stream_id: &StreamId, from: Version) -> Result<Vec<SerializedEvent>, EventStoreError> {
    const PAGE: usize = 1024;
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let page = store.read_stream(stream_id, next, PAGE).await?;
        let n = page.len();
        if let Some(last) = page.last() {
            next = last.stream_version.unwrap_or(next).next();
        }
        out.extend(page);
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// A shared event store handle.
pub type SharedEventStore = Arc<dyn EventStore>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = EventStoreError::unavailable(io);
        let source = std::error::Error::source(&err).expect("the client error is the source");
        assert_eq!(source.to_string(), "connection refused");
        assert_eq!(err.cause().and_then(StoreCause::downcast_ref::<std::io::Error>).map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused));
        assert!(err.to_string().contains("connection refused") && err.to_string().contains("check that the database is running"), "{err}");
        assert!(err.is_retryable());

        // With a hint: the message says what to do; the client error is still in the chain.
        let err = EventStoreError::backend(StoreCause::with_hint(std::io::Error::other("no such table"), "call migrate() once"));
        assert_eq!(err.to_string(), "event store failure: no such table: call migrate() once");
        assert!(err.cause().and_then(StoreCause::downcast_ref::<std::io::Error>).is_some());
        assert!(!err.is_retryable());

        // A plain message, and a cause passed on is not wrapped twice.
        let cause = StoreCause::msg("database restarting (test)");
        let err = EventStoreError::unavailable(cause.clone());
        assert_eq!(err.cause(), Some(&cause));
        assert!(std::error::Error::source(&cause).is_none());
        assert_eq!(EventStoreError::backend(StoreCause::new(cause.clone())), EventStoreError::Backend { source: cause });
        assert!(EventStoreError::Corrupt { reason: "x".into() }.cause().is_none());

        // Clone and equality by message.
        let a = EventStoreError::unavailable(std::io::Error::other("x"));
        assert_eq!(a.clone(), a);
        assert_eq!(a, EventStoreError::unavailable(StoreCause::msg("x")));
        assert_ne!(a, EventStoreError::unavailable(StoreCause::msg("y")));
        assert_ne!(a, EventStoreError::backend(StoreCause::msg("x")));
    }

    #[test]
    fn store_trait_is_object_safe() {
        fn takes(_: Option<Arc<dyn EventStore>>) {}
        takes(None);
        assert_eq!(PruneReport::new(2, 3), PruneReport { outbox_rows: 2, inbox_marks: 3 });
        assert_eq!(PruneReport::default(), PruneReport::new(0, 0));
    }
}
