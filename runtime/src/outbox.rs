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
