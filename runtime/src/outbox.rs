//! The outbox relay: publishes what the store's outbox still holds, for when a process died between
//! persisting events and publishing them.
//!
//! Delivery is at-least-once: an event published just before a crash (but not yet marked) is
//! published again. Consumers de-duplicate by event id (the saga runner does).
//!
//! The periodic relay ([`spawn_relay`]) leaves alone entries younger than its interval (by the
//! event's `metadata.timestamp`): those are most likely being published right now by the runtime
//! that appended them, in this process or another, and publishing them too would only make
//! duplicates. Anything older is published.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{EventBus, EventStore, EventStoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What one relay pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Entries published and marked.
    pub published: usize,
    /// Entries whose publish failed (left pending for the next pass).
    pub failed: usize,
    /// Whether the pass stopped at an entry younger than its minimum age (left for a later pass).
    pub deferred: bool,
}

/// Publishes pending outbox entries, `batch` at a time, until none is left or a publish fails.
pub async fn relay_pending(store: &dyn EventStore, bus: &dyn EventBus, batch: usize) -> Result<RelayReport, EventStoreError> {
    relay_settled(store, bus, batch, Duration::ZERO).await
}

/// Like [`relay_pending`], but stops at the first entry whose event is younger than `min_age`
/// (entries come oldest first): its publish is probably still under way elsewhere.
pub async fn relay_settled(store: &dyn EventStore, bus: &dyn EventBus, batch: usize, min_age: Duration) -> Result<RelayReport, EventStoreError> {
    let mut report = RelayReport::default();
    let min_age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
    loop {
        let pending = store.pending_publications(batch.max(1)).await?;
        if pending.is_empty() {
            return Ok(report);
        }
        for p in &pending {
            if chrono::Utc::now().signed_duration_since(p.event.metadata.timestamp) < min_age {
                report.deferred = true;
                return Ok(report);
            }
            match bus.publish(p.topic.as_str(), &p.event).await {
                Ok(()) => {
                    store.mark_published(p.event.event_id, &p.topic).await?;
                    report.published += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, event_id = %p.event.event_id, topic = %p.topic, "outbox relay could not publish; will retry");
                    report.failed += 1;
                    return Ok(report);
                }
            }
        }
    }
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

/// Runs [`relay_settled`] at start-up and then every `interval`, leaving entries younger than
/// `interval` for a later pass.
pub fn spawn_relay(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>, interval: Duration) -> RelayHandle {
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            match relay_settled(&*store, &*bus, 256, interval).await {
                Ok(r) if r.published > 0 => tracing::info!(published = r.published, "outbox relay published pending events"),
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
