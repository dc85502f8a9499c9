//! [`InMemoryEventStore`]: the event store with every guarantee of the durable ones, except that it
//! lives in this process's memory.
//!
//! All writes take one lock, so the global log has no gaps and `read_all` is always in commit order.
//! Like the durable stores it keeps published outbox entries and inbox marks, with the time they were
//! recorded, until [`EventStore::prune`] deletes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use composable_rust_core::event_store::{PruneReport, identical_retry};
use composable_rust_core::{
    AppendRequest, AppendResult, ClaimedDeadline, DeadlineChange, DeadlineOwner, EventStore, EventStoreError, GlobalPosition, PendingPublication,
    RecordedEvent, SerializedEvent, Snapshot, StoredDeadline, StreamId, Topic, Version,
};
use parking_lot::RwLock;
use uuid::Uuid;

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    by_id: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
    /// Pending outbox entries by sequence number.
    outbox: BTreeMap<u64, (Topic, Uuid)>,
    /// Every outbox entry: its sequence number while pending, when it was published once it is.
    outbox_index: HashMap<(Uuid, Topic), OutboxState>,
    next_outbox: u64,
    /// Inbox marks and when they were recorded.
    inbox: HashMap<(String, Uuid), DateTime<Utc>>,
    deadlines: Deadlines,
}

/// Deadlines with an index on the due time and one on the (owner, name) of the pending ones.
#[derive(Default)]
struct Deadlines {
    rows: HashMap<Uuid, DeadlineRow>,
    /// Due time, then scheduling order (deadlines due together fire in the order they were
    /// scheduled), then id.
    by_due: BTreeSet<(DateTime<Utc>, u64, Uuid)>,
    next_seq: u64,
    pending: HashMap<(DeadlineOwner, String), Uuid>,
}

struct DeadlineRow {
    deadline: StoredDeadline,
    fired: bool,
    claimed_until: Option<DateTime<Utc>>,
    claims: u32,
    seq: u64,
}

impl Deadlines {
    fn remove(&mut self, id: Uuid) {
        if let Some(row) = self.rows.remove(&id) {
            self.by_due.remove(&(row.deadline.due_at, row.seq, id));
            let key = (row.deadline.owner, row.deadline.name);
            if self.pending.get(&key) == Some(&id) {
                self.pending.remove(&key);
            }
        }
    }

    fn is_pending(&self, id: Uuid) -> bool {
        self.rows.get(&id).is_some_and(|r| !r.fired)
    }

    fn apply(&mut self, change: DeadlineChange) {
        match change {
            DeadlineChange::Schedule(d) => {
                if let Some(old) = self.pending.get(&(d.owner.clone(), d.name.clone())).copied() {
                    self.remove(old);
                }
                // The same step scheduling again (same id) replaces its own row.
                self.remove(d.id);
                let seq = self.next_seq;
                self.next_seq += 1;
                self.by_due.insert((d.due_at, seq, d.id));
                self.pending.insert((d.owner.clone(), d.name.clone()), d.id);
                self.rows.insert(d.id, DeadlineRow { deadline: d, fired: false, claimed_until: None, claims: 0, seq });
            }
            DeadlineChange::Cancel { owner, name } => {
                if let Some(id) = self.pending.get(&(owner, name)).copied() {
                    self.remove(id);
                }
            }
            DeadlineChange::Fire { id } => {
                if let Some(row) = self.rows.get_mut(&id) {
                    row.fired = true;
                    self.pending.remove(&(row.deadline.owner.clone(), row.deadline.name.clone()));
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum OutboxState {
    Pending(u64),
    Published(DateTime<Utc>),
}

/// An in-memory [`EventStore`]. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct InMemoryEventStore {
    inner: RwLock<Inner>,
    /// Projections' documents and checkpoints (see `read_model.rs`).
    pub(crate) models: parking_lot::Mutex<crate::read_model::ReadModels>,
}

impl std::fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("InMemoryEventStore").field("events", &inner.log.len()).field("streams", &inner.streams.len()).finish_non_exhaustive()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events stored in all.
    pub fn event_count(&self) -> usize {
        self.inner.read().log.len()
    }

    /// Ids of all streams, sorted.
    pub fn stream_ids(&self) -> Vec<StreamId> {
        let mut ids: Vec<StreamId> = self.inner.read().streams.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Outbox entries still pending.
    pub fn pending_outbox_len(&self) -> usize {
        self.inner.read().outbox.len()
    }
}

/// The stored events whose ids the request carries, in position order (usually none).
fn already_stored(inner: &Inner, request: &AppendRequest) -> Vec<RecordedEvent> {
    let mut found: Vec<usize> = request.events.iter().filter_map(|e| inner.by_id.get(&e.event_id).copied()).collect();
    found.sort_unstable();
    found.into_iter().map(|i| inner.log[i].clone()).collect()
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        request.validate()?;
        let mut inner = self.inner.write();
        if let Some(result) = identical_retry(&request, &already_stored(&inner, &request))? {
            return Ok(result);
        }
        if let Some(mark) = &request.inbox {
            if inner.inbox.contains_key(&(mark.consumer.clone(), mark.event_id)) {
                return Err(EventStoreError::AlreadyProcessed { consumer: mark.consumer.clone(), event_id: mark.event_id });
            }
        }
        let actual = Version(inner.streams.get(&request.stream_id).map_or(0, |v| v.len() as u64));
        if !request.expected_version.accepts(actual) {
            return Err(EventStoreError::ConcurrencyConflict { stream_id: request.stream_id, expected: request.expected_version, actual });
        }
        for change in &request.deadlines {
            if let DeadlineChange::Fire { id } = change {
                if !inner.deadlines.is_pending(*id) {
                    return Err(EventStoreError::DeadlineNotPending { id: *id });
                }
            }
        }
        if let Some(mark) = request.inbox {
            inner.inbox.insert((mark.consumer, mark.event_id), Utc::now());
        }
        for change in request.deadlines {
            inner.deadlines.apply(change);
        }
        let first_position = GlobalPosition(inner.log.len() as u64 + 1);
        let mut version = actual;
        for mut event in request.events {
            version = version.next();
            event.stream_id = Some(request.stream_id.clone());
            event.stream_version = Some(version);
            let idx = inner.log.len();
            inner.by_id.insert(event.event_id, idx);
            inner.streams.entry(request.stream_id.clone()).or_default().push(idx);
            inner.log.push(RecordedEvent { position: GlobalPosition(idx as u64 + 1), event });
        }
        for intent in request.outbox {
            let key = (intent.event_id, intent.topic.clone());
            if inner.outbox_index.contains_key(&key) {
                continue;
            }
            let seq = inner.next_outbox;
            inner.next_outbox += 1;
            inner.outbox.insert(seq, (intent.topic, intent.event_id));
            inner.outbox_index.insert(key, OutboxState::Pending(seq));
        }
        Ok(AppendResult { first_version: actual.next(), next_expected_version: version, first_position, duplicate: false })
    }

    async fn read_stream(&self, stream_id: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
        let inner = self.inner.read();
        let Some(indices) = inner.streams.get(stream_id) else { return Ok(Vec::new()) };
        let skip = usize::try_from(from.0.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(indices.iter().skip(skip).take(limit).map(|&i| inner.log[i].event.clone()).collect())
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version, EventStoreError> {
        Ok(Version(self.inner.read().streams.get(stream_id).map_or(0, |v| v.len() as u64)))
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let inner = self.inner.read();
        let start = usize::try_from(after.0).unwrap_or(usize::MAX).min(inner.log.len());
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), EventStoreError> {
        let mut inner = self.inner.write();
        let current = Version(inner.streams.get(&snapshot.stream_id).map_or(0, |v| v.len() as u64));
        snapshot.check_not_ahead(current)?;
        let newer_exists = inner.snapshots.get(&snapshot.stream_id).is_some_and(|s| s.version > snapshot.version);
        if !newer_exists {
            inner.snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, EventStoreError> {
        Ok(self.inner.read().snapshots.get(stream_id).cloned())
    }

    async fn pending_publications(&self, limit: usize) -> Result<Vec<PendingPublication>, EventStoreError> {
        let inner = self.inner.read();
        Ok(inner
            .outbox
            .values()
            .take(limit)
            .filter_map(|(topic, id)| inner.by_id.get(id).map(|&i| PendingPublication { topic: topic.clone(), event: inner.log[i].event.clone() }))
            .collect())
    }

    async fn mark_published(&self, event_id: Uuid, topic: &Topic) -> Result<(), EventStoreError> {
        let mut inner = self.inner.write();
        let key = (event_id, topic.clone());
        if let Some(&OutboxState::Pending(seq)) = inner.outbox_index.get(&key) {
            inner.outbox.remove(&seq);
            inner.outbox_index.insert(key, OutboxState::Published(Utc::now()));
        }
        Ok(())
    }

    async fn prune(&self, horizon: DateTime<Utc>) -> Result<PruneReport, EventStoreError> {
        let mut inner = self.inner.write();
        let (outbox_before, inbox_before) = (inner.outbox_index.len(), inner.inbox.len());
        inner.outbox_index.retain(|_, state| !matches!(state, OutboxState::Published(at) if *at < horizon));
        inner.inbox.retain(|_, recorded| *recorded >= horizon);
        let gone = |before: usize, after: usize| (before - after) as u64;
        Ok(PruneReport::new(gone(outbox_before, inner.outbox_index.len()), gone(inbox_before, inner.inbox.len())))
    }

    fn read_model_store(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn composable_rust_core::ReadModelStore>> {
        Some(self)
    }

    async fn head(&self) -> Result<GlobalPosition, EventStoreError> {
        Ok(GlobalPosition(self.inner.read().log.len() as u64))
    }

    async fn claim_due_deadlines(
        &self,
        consumer: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedDeadline>, EventStoreError> {
        let until = chrono::Duration::from_std(lease).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut inner = self.inner.write();
        let deadlines = &mut inner.deadlines;
        let due: Vec<Uuid> = deadlines
            .by_due
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, _, id)| *id)
            .filter(|id| deadlines.rows.get(id).is_some_and(|r| r.deadline.owner.consumer == consumer && r.claimed_until.is_none_or(|c| c <= now)))
            .take(limit)
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|id| {
                let row = deadlines.rows.get_mut(&id)?;
                row.claimed_until = Some(until);
                row.claims += 1;
                Some(ClaimedDeadline { deadline: row.deadline.clone(), fired: row.fired, claims: row.claims })
            })
            .collect())
    }

    async fn complete_deadline(&self, id: Uuid) -> Result<(), EventStoreError> {
        self.inner.write().deadlines.remove(id);
        Ok(())
    }

    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<StoredDeadline>, EventStoreError> {
        let inner = self.inner.read();
        let d = &inner.deadlines;
        Ok(d.by_due
            .iter()
            .filter_map(|(_, _, id)| d.rows.get(id))
            .filter(|r| r.deadline.owner.consumer == consumer && instance.is_none_or(|i| r.deadline.owner.instance == i))
            .take(limit)
            .map(|r| r.deadline.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use composable_rust_core::ExpectedVersion;

    use super::*;

    fn append(stream: &str, expected: ExpectedVersion, n: usize) -> AppendRequest {
        let events = (0..n).map(|i| SerializedEvent::new("Tested.v1", vec![u8::try_from(i).unwrap()], None)).collect();
        AppendRequest::new(StreamId::new(stream).unwrap(), expected, events)
    }

    #[tokio::test]
    async fn appends_get_consecutive_versions_and_positions() {
        let store = InMemoryEventStore::new();
        let first = store.append(append("s-1", ExpectedVersion::NoStream, 2)).await.unwrap();
        assert_eq!((first.first_version, first.next_expected_version, first.first_position), (Version(1), Version(2), GlobalPosition(1)));
        let second = store.append(append("s-2", ExpectedVersion::Any, 1)).await.unwrap();
        assert_eq!(second.first_position, GlobalPosition(3));
        assert_eq!(store.read_stream(&StreamId::new("s-1").unwrap(), Version(2), 10).await.unwrap().len(), 1);
        assert_eq!(store.read_all(GlobalPosition(1), 10).await.unwrap().len(), 2);
        assert_eq!((store.event_count(), store.stream_ids().len()), (3, 2));
    }

    #[tokio::test]
    async fn a_wrong_expected_version_stores_nothing() {
        let store = InMemoryEventStore::new();
        store.append(append("s", ExpectedVersion::NoStream, 1)).await.unwrap();
        let err = store.append(append("s", ExpectedVersion::Exact(Version(3)), 1)).await.unwrap_err();
        assert!(matches!(err, EventStoreError::ConcurrencyConflict { actual: Version(1), .. }), "{err}");
        assert_eq!(store.event_count(), 1);
    }

    #[tokio::test]
    async fn an_identical_retry_is_an_idempotent_success() {
        let store = InMemoryEventStore::new();
        let request = append("s", ExpectedVersion::NoStream, 2);
        store.append(request.clone()).await.unwrap();
        assert!(store.append(request).await.unwrap().duplicate);
        assert_eq!(store.event_count(), 2);
    }

    #[tokio::test]
    async fn an_inbox_mark_is_recorded_once() {
        let store = InMemoryEventStore::new();
        let handled = Uuid::new_v4();
        store.append(append("s", ExpectedVersion::Any, 1).with_inbox("saga.x", handled)).await.unwrap();
        let err = store.append(append("s", ExpectedVersion::Any, 1).with_inbox("saga.x", handled)).await.unwrap_err();
        assert!(matches!(err, EventStoreError::AlreadyProcessed { .. }), "{err}");
    }
}
