//! The outbox relay: publishes what the store's outbox still holds, for when a process died between
//! storing events and publishing them (or a publish failed).
//!
//! # Guarantees
//! - **At least once.** Every pending entry is published until the bus accepts it, then marked. An
//!   event published just before a crash (not yet marked) is published again; consumers de-duplicate
//!   by event id (the saga runner does).
//! - **Per entry.** A retryable failure backs that entry off (exponentially, per entry) without
//!   holding back the others; an entry the bus refuses for good (or still failing after
//!   [`RelayConfig::max_attempts`]) goes to the dead-letter sink with its event and reason, and is
//!   marked so it stops coming back.
//! - **Order** follows the store's positions: entries are taken in outbox order, and once an entry of
//!   a stream is held back (young, backing off), later entries of that stream wait too in that pass,
//!   so one stream's events are never published out of order by the relay.
//! - **No wall clock of the writers.** "Young" is measured from when *this relay first saw* an entry
//!   ([`RelayConfig::min_age`]), never from the event's timestamp, so a writer with a fast clock
//!   cannot hold anything back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use composable_rust_core::{EventBus, EventStore, EventStoreError, StreamId, Topic};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::dead_letter::{DeadLetterSink, InMemoryDeadLetters, dead_letter};
use crate::retry::RetryPolicy;

/// What one relay pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Entries published and marked.
    pub published: usize,
    /// Entries whose publish failed this pass (kept, backing off).
    pub failed: usize,
    /// Entries dead-lettered (refused for good, or out of attempts) and marked.
    pub dead_lettered: usize,
    /// Entries left for a later pass (younger than the minimum age, backing off, or behind such an
    /// entry of the same stream).
    pub deferred: usize,
}

/// How a relay behaves.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Entries read per page (default 256).
    pub batch: usize,
    /// Leave entries alone until this relay has known them this long (default zero): they are most
    /// likely being published right now by the runtime that appended them.
    pub min_age: Duration,
    /// Attempts before an entry that keeps failing is dead-lettered (default 10).
    pub max_attempts: u32,
    /// Backoff between attempts of one entry.
    pub backoff: RetryPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { batch: 256, min_age: Duration::ZERO, max_attempts: 10, backoff: RetryPolicy::default() }
    }
}

impl RelayConfig {
    /// Sets the minimum age.
    #[must_use]
    pub fn min_age(mut self, min_age: Duration) -> Self {
        self.min_age = min_age;
        self
    }

    /// Sets the attempts before dead-lettering.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the page size.
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }
}

#[derive(Debug, Clone, Copy)]
struct EntryState {
    first_seen: Instant,
    attempts: u32,
    next_try: Instant,
}

/// A relay with memory of the entries it has seen (first sighting, attempts, backoff).
pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    dead_letters: Arc<dyn DeadLetterSink>,
    config: RelayConfig,
    entries: HashMap<(Uuid, Topic), EntryState>,
}

impl OutboxRelay {
    /// A relay from `store`'s outbox to `bus`, dead-lettering into `dead_letters`.
    pub fn new(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>, dead_letters: Arc<dyn DeadLetterSink>, config: RelayConfig) -> Self {
        Self { store, bus, dead_letters, config, entries: HashMap::new() }
    }

    /// One pass: pages through the pending entries while it makes progress.
    ///
    /// The store hands out the oldest pending entries first; entries held back (young, backing
    /// off, behind such an entry of their stream) stay in front. When a full page made no progress
    /// the next read asks for a larger one, so that entries behind them are reached: a page of
    /// stuck entries never holds back the rest.
    pub async fn pass(&mut self) -> Result<RelayReport, EventStoreError> {
        let mut report = RelayReport::default();
        let mut limit = self.config.batch;
        // Entries counted as deferred, and entries tried and failed, in this pass (a larger page
        // sees them again; a failed entry is not tried twice in one pass).
        let mut deferred: HashSet<(Uuid, Topic)> = HashSet::new();
        let mut failed: HashSet<(Uuid, Topic)> = HashSet::new();
        loop {
            let page = self.store.pending_publications(limit).await?;
            if page.is_empty() {
                // Nothing pending: whatever was remembered left the outbox (marked by someone else).
                self.entries.clear();
                break;
            }
            let now = Instant::now();
            let keys: HashSet<(Uuid, Topic)> = page.iter().map(|p| (p.event.event_id, p.topic.clone())).collect();
            // Forget entries that left the outbox (marked by someone else).
            if page.len() < limit {
                self.entries.retain(|k, _| keys.contains(k));
            }
            let mut held: HashSet<Option<StreamId>> = HashSet::new();
            let mut progressed = false;
            for p in &page {
                let key = (p.event.event_id, p.topic.clone());
                let state = *self.entries.entry(key.clone()).or_insert(EntryState { first_seen: now, attempts: 0, next_try: now });
                let stream = p.event.stream_id.clone();
                let young = now.duration_since(state.first_seen) < self.config.min_age;
                if failed.contains(&key) {
                    held.insert(stream);
                    continue;
                }
                if young || state.next_try > now || held.contains(&stream) {
                    held.insert(stream);
                    if deferred.insert(key) {
                        report.deferred += 1;
                    }
                    continue;
                }
                if deferred.remove(&key) {
                    report.deferred -= 1;
                }
                match crate::metrics::timed(crate::metrics::Call::Publish, self.bus.publish(p.topic.as_str(), &p.event)).await {
                    Ok(()) => {
                        crate::metrics::event_published();
                        self.store.mark_published(p.event.event_id, &p.topic).await?;
                        self.entries.remove(&key);
                        report.published += 1;
                        progressed = true;
                    }
                    Err(e) if e.is_retryable() && state.attempts + 1 < self.config.max_attempts => {
                        tracing::warn!(error = %e, event_id = %p.event.event_id, topic = %p.topic, attempt = state.attempts + 1, "outbox relay could not publish; backing off");
                        let attempts = state.attempts + 1;
                        let next_try = now + self.config.backoff.backoff_after(attempts);
                        self.entries.insert(key.clone(), EntryState { attempts, next_try, ..state });
                        held.insert(stream);
                        failed.insert(key);
                        report.failed += 1;
                    }
                    Err(e) => {
                        dead_letter(
                            &*self.dead_letters,
                            format!("outbox relay: publish of {} {} to {}", p.event.event_type, p.event.event_id, p.topic),
                            e.to_string(),
                            state.attempts + 1,
                            Some(p.event.clone()),
                        );
                        self.store.mark_published(p.event.event_id, &p.topic).await?;
                        self.entries.remove(&key);
                        report.dead_lettered += 1;
                        progressed = true;
                    }
                }
            }
            if page.len() < limit {
                break;
            }
            if !progressed {
                // A full page of held-back entries: look past them.
                limit = limit.saturating_add(self.config.batch);
            }
        }
        crate::metrics::outbox_pass(report.published, report.failed + report.deferred);
        Ok(report)
    }
}

/// Publishes every pending outbox entry once (no minimum age): for start-up and tests. Entries that
/// fail stay pending (retryable) or are dead-lettered into a throw-away sink after
/// `RelayConfig::default().max_attempts`; use an [`OutboxRelay`] to keep the dead letters.
pub async fn relay_pending(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>) -> Result<RelayReport, EventStoreError> {
    OutboxRelay::new(store, bus, Arc::new(InMemoryDeadLetters::default()), RelayConfig::default()).pass().await
}

/// A relay running every `interval` until stopped.
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay after its current pass.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Runs `relay` at start-up and then every `interval`.
pub fn spawn_relay(mut relay: OutboxRelay, interval: Duration) -> RelayHandle {
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            match relay.pass().await {
                Ok(r) if r.published > 0 || r.dead_lettered > 0 => {
                    tracing::info!(published = r.published, dead_lettered = r.dead_lettered, "outbox relay published pending events");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox relay could not read the outbox"),
            }
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    });
    RelayHandle { stop, task }
}

/// Retention of the outbox and the inbox: runs [`EventStore::prune`] with the horizon `keep`
/// before now (on this machine's wall clock) at start-up and then every `every`, so that published
/// outbox entries and inbox marks do not pile up in a long run. Pending entries, events and
/// snapshots are never deleted. Choose `keep` longer than the longest time the bus may redeliver an
/// event: an event redelivered after its inbox mark was pruned is no longer refused as already
/// processed (see [`EventStore::prune`]).
pub fn spawn_pruner(store: Arc<dyn EventStore>, keep: Duration, every: Duration) -> PrunerHandle {
    let (stop, mut stop_rx) = watch::channel(false);
    let totals = Arc::new(parking_lot::Mutex::new(PruneTotals::default()));
    let seen = Arc::clone(&totals);
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let task = tokio::spawn(async move {
        loop {
            let horizon = chrono::Utc::now().checked_sub_signed(keep).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            match store.prune(horizon).await {
                Ok(report) => {
                    let mut t = seen.lock();
                    t.passes += 1;
                    t.outbox_rows += report.outbox_rows;
                    t.inbox_marks += report.inbox_marks;
                    if report.outbox_rows > 0 || report.inbox_marks > 0 {
                        tracing::debug!(outbox_rows = report.outbox_rows, inbox_marks = report.inbox_marks, "pruned the outbox and the inbox");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pruning the outbox and the inbox failed; trying again later"),
            }
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                () = tokio::time::sleep(every.max(Duration::from_millis(1))) => {}
            }
        }
    });
    PrunerHandle { stop, task, totals }
}

/// What a [`spawn_pruner`] task deleted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneTotals {
    /// Prune calls that succeeded.
    pub passes: u64,
    /// Published outbox entries deleted, in all.
    pub outbox_rows: u64,
    /// Inbox marks deleted, in all.
    pub inbox_marks: u64,
}

/// A pruner running every interval until stopped.
pub struct PrunerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    totals: Arc<parking_lot::Mutex<PruneTotals>>,
}

impl PrunerHandle {
    /// What was deleted so far.
    pub fn totals(&self) -> PruneTotals {
        *self.totals.lock()
    }

    /// Stops the pruner after its current pass; returns what it deleted.
    pub async fn shutdown(self) -> PruneTotals {
        self.stop.send_replace(true);
        let _ = self.task.await;
        *self.totals.lock()
    }
}

#[cfg(test)]
mod tests {
    use composable_rust_core::{AppendRequest, ExpectedVersion, OutboxIntent, SerializedEvent};
    use composable_rust_memory::{InMemoryEventBus, InMemoryEventStore};

    use super::*;

    /// Stores `n` events of stream `s`, each with an outbox entry for `topic`; returns their ids.
    async fn stored_with_outbox(store: &InMemoryEventStore, topic: &Topic, n: usize) -> Vec<Uuid> {
        let events: Vec<SerializedEvent> = (0..n).map(|i| SerializedEvent::new("Happened.v1", vec![u8::try_from(i % 256).unwrap()], None)).collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut request = AppendRequest::new(StreamId::new("s").unwrap(), ExpectedVersion::Any, events);
        request.outbox = ids.iter().map(|&id| OutboxIntent { event_id: id, topic: topic.clone() }).collect();
        store.append(request).await.unwrap();
        ids
    }

    /// The relay remembers an entry it saw (when, attempts) only while the entry is pending: entries
    /// published by someone else (the runtime that appended them, most of the time) are forgotten,
    /// also once the outbox is empty. Before, an empty outbox ended the pass before the relay
    /// forgot them: a relay kept them until a later pass saw a short page.
    #[tokio::test]
    async fn the_relay_forgets_entries_published_by_someone_else_even_when_the_outbox_is_empty() {
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let topic = Topic::new("outbox.memory").unwrap();
        let ids = stored_with_outbox(&store, &topic, 3).await;
        let mut relay =
            OutboxRelay::new(store.clone(), bus, Arc::new(InMemoryDeadLetters::default()), RelayConfig::default().min_age(Duration::from_secs(3600)));
        let report = relay.pass().await.unwrap();
        assert_eq!(report.deferred, 3, "young entries are left to the runtime that appended them: {report:?}");
        assert_eq!(relay.entries.len(), 3, "and remembered from their first sighting");
        for id in ids {
            store.mark_published(id, &topic).await.unwrap();
        }
        let report = relay.pass().await.unwrap();
        assert_eq!(report, RelayReport::default());
        assert_eq!(relay.entries.len(), 0, "nothing pending, nothing remembered");
    }

    /// A long run: entries come and go (published by the runtime between passes); what the relay
    /// remembers stays within what is pending.
    #[tokio::test]
    async fn what_the_relay_remembers_stays_within_the_pending_entries_in_a_long_run() {
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let topic = Topic::new("outbox.memory").unwrap();
        let mut relay =
            OutboxRelay::new(store.clone(), bus, Arc::new(InMemoryDeadLetters::default()), RelayConfig::default().min_age(Duration::from_secs(3600)).batch(8));
        for round in 0..50 {
            let ids = stored_with_outbox(&store, &topic, 20).await;
            relay.pass().await.unwrap();
            assert!(relay.entries.len() <= store.pending_outbox_len(), "round {round}: {} remembered", relay.entries.len());
            for id in ids {
                store.mark_published(id, &topic).await.unwrap();
            }
            relay.pass().await.unwrap();
            assert!(relay.entries.len() <= store.pending_outbox_len(), "round {round}: {} remembered", relay.entries.len());
        }
        assert_eq!(relay.entries.len(), 0);
    }

    /// Published outbox entries and inbox marks are kept until pruned: a pruner bounds them in a long
    /// run, pending entries untouched.
    #[tokio::test]
    async fn a_pruner_deletes_published_entries_and_inbox_marks_and_keeps_pending_ones() {
        let store = Arc::new(InMemoryEventStore::new());
        let topic = Topic::new("outbox.memory").unwrap();
        let published = stored_with_outbox(&store, &topic, 5).await;
        for id in &published {
            store.mark_published(*id, &topic).await.unwrap();
        }
        stored_with_outbox(&store, &topic, 2).await;
        let handled = Uuid::new_v4();
        let marked = AppendRequest::new(StreamId::new("m").unwrap(), ExpectedVersion::Any, vec![SerializedEvent::new("Handled.v1", vec![1], None)]);
        store.append(marked.with_inbox("saga.memory", handled)).await.unwrap();

        let pruner = spawn_pruner(store.clone(), Duration::ZERO, Duration::from_millis(5));
        let mut totals = pruner.totals();
        for _ in 0..400 {
            if totals.outbox_rows == 5 && totals.inbox_marks == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            totals = pruner.totals();
        }
        let totals = pruner.shutdown().await;
        assert_eq!((totals.outbox_rows, totals.inbox_marks), (5, 1), "{totals:?}");
        assert_eq!(store.pending_outbox_len(), 2, "pending entries are never pruned");
        let again = AppendRequest::new(StreamId::new("m").unwrap(), ExpectedVersion::Any, vec![SerializedEvent::new("Handled.v1", vec![2], None)]);
        store.append(again.with_inbox("saga.memory", handled)).await.expect("the pruned mark no longer refuses the event (documented)");
    }
}
