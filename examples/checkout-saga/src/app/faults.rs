//! Fault injection for a whole run: deliveries handed to the saga twice, store appends and bus
//! publishes failing retryably before or after they took effect. Each fault is drawn from one
//! seeded generator, so a run is repeatable up to thread scheduling.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use composable_rust::event_bus::BusCause;
use composable_rust::event_store::{PruneReport, StoreCause};
use composable_rust::{
    AppendRequest, AppendResult, Delivery, EventBus, EventBusError, EventStore, EventStoreError, EventStream, GlobalPosition, PendingPublication,
    RecordedEvent, SerializedEvent, Snapshot, StreamId, SubscribeOptions, Topic, Version,
};
use futures::Stream;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// How often each fault happens (probabilities in `0..=1`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// A delivery is handed to the saga again, after the original was handled.
    pub duplicate_deliveries: f64,
    /// An append or publish fails with a retryable error, half the time after it took effect.
    pub transient_failures: f64,
    /// Seed of the fault generator.
    pub seed: u64,
}

impl Faults {
    /// Whether any fault is injected.
    pub fn any(&self) -> bool {
        self.duplicate_deliveries > 0.0 || self.transient_failures > 0.0
    }
}

/// Counts of injected faults, for the report.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Deliveries handed over twice.
    pub duplicated: AtomicU64,
    /// Failures before the operation took effect.
    pub failed_before: AtomicU64,
    /// Failures after the operation took effect.
    pub failed_after: AtomicU64,
}

/// The shared dice.
pub struct Dice {
    rng: Mutex<StdRng>,
    faults: Faults,
    /// What was injected.
    pub stats: FaultStats,
}

/// Where an injected failure happens.
enum Failure {
    Before,
    After,
}

impl Dice {
    /// Dice for `faults`.
    pub fn new(faults: Faults) -> Arc<Self> {
        Arc::new(Self { rng: Mutex::new(StdRng::seed_from_u64(faults.seed ^ 0x5eed_fa17)), faults, stats: FaultStats::default() })
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().random_bool(p.min(1.0))
    }

    fn failure(&self) -> Option<Failure> {
        if !self.roll(self.faults.transient_failures) {
            return None;
        }
        if self.rng.lock().random_bool(0.5) {
            self.stats.failed_before.fetch_add(1, Ordering::Relaxed);
            Some(Failure::Before)
        } else {
            self.stats.failed_after.fetch_add(1, Ordering::Relaxed);
            Some(Failure::After)
        }
    }
}

fn injected(what: &str) -> String {
    format!("injected transient failure ({what})")
}

fn store_failure(what: &str) -> EventStoreError {
    EventStoreError::unavailable(StoreCause::msg(injected(what)))
}

/// A store whose appends fail retryably now and then, before or after they took effect.
pub struct FlakyStore {
    /// The real store.
    pub inner: Arc<dyn EventStore>,
    /// The dice.
    pub dice: Arc<Dice>,
}

#[async_trait]
impl EventStore for FlakyStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        match self.dice.failure() {
            None => self.inner.append(request).await,
            Some(Failure::Before) => Err(store_failure("append not stored")),
            Some(Failure::After) => {
                self.inner.append(request).await?;
                Err(store_failure("append stored, reply lost"))
            }
        }
    }

    async fn read_stream(&self, stream_id: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
        self.inner.read_stream(stream_id, from, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version, EventStoreError> {
        self.inner.stream_version(stream_id).await
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        self.inner.read_all(after, limit).await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), EventStoreError> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, EventStoreError> {
        self.inner.load_snapshot(stream_id).await
    }

    async fn pending_publications(&self, limit: usize) -> Result<Vec<PendingPublication>, EventStoreError> {
        self.inner.pending_publications(limit).await
    }

    async fn mark_published(&self, event_id: Uuid, topic: &Topic) -> Result<(), EventStoreError> {
        self.inner.mark_published(event_id, topic).await
    }

    async fn prune(&self, horizon: chrono::DateTime<chrono::Utc>) -> Result<PruneReport, EventStoreError> {
        self.inner.prune(horizon).await
    }

    async fn claim_due_deadlines(
        &self,
        consumer: &str,
        now: chrono::DateTime<chrono::Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<composable_rust::ClaimedDeadline>, EventStoreError> {
        self.inner.claim_due_deadlines(consumer, now, lease, limit).await
    }

    fn read_model_store(self: Arc<Self>) -> Option<Arc<dyn composable_rust::ReadModelStore>> {
        Arc::clone(&self.inner).read_model_store()
    }

    async fn head(&self) -> Result<composable_rust::GlobalPosition, EventStoreError> {
        self.inner.head().await
    }

    async fn read_all_filtered(
        &self,
        after: composable_rust::GlobalPosition,
        limit: usize,
        filter: &composable_rust::EventFilter,
    ) -> Result<composable_rust::FilteredPage, EventStoreError> {
        self.inner.read_all_filtered(after, limit, filter).await
    }

    async fn complete_deadline(&self, id: uuid::Uuid) -> Result<(), EventStoreError> {
        self.inner.complete_deadline(id).await
    }

    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<composable_rust::StoredDeadline>, EventStoreError> {
        self.inner.deadlines(consumer, instance, limit).await
    }
}

/// A bus whose publishes fail retryably now and then (before or after the broker took the event),
/// and whose subscriptions hand some deliveries over a second time after the first was handled.
pub struct FlakyBus {
    /// The real bus.
    pub inner: Arc<dyn EventBus>,
    /// The dice.
    pub dice: Arc<Dice>,
}

#[async_trait]
impl EventBus for FlakyBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let fail = |what: &str| EventBusError::publish_failed(topic, BusCause::msg(injected(what)), true);
        match self.dice.failure() {
            None => self.inner.publish(topic, event).await,
            Some(Failure::Before) => Err(fail("not published")),
            Some(Failure::After) => {
                self.inner.publish(topic, event).await?;
                Err(fail("published, reply lost"))
            }
        }
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let inner = self.inner.subscribe_with(topics, options).await?;
        if self.dice.faults.duplicate_deliveries <= 0.0 {
            return Ok(inner);
        }
        Ok(Box::pin(Duplicating { inner, dice: Arc::clone(&self.dice), again: VecDeque::new() }))
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// Hands some deliveries over again: the copy comes on the next poll, i.e. after the consumer
/// handled (and acknowledged) the original, as a redelivery after a lost acknowledgement would.
struct Duplicating {
    inner: EventStream,
    dice: Arc<Dice>,
    again: VecDeque<Delivery>,
}

impl Stream for Duplicating {
    type Item = Result<Delivery, EventBusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(d) = self.again.pop_front() {
            return Poll::Ready(Some(Ok(d)));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => {
                if self.dice.roll(self.dice.faults.duplicate_deliveries) {
                    self.dice.stats.duplicated.fetch_add(1, Ordering::Relaxed);
                    let copy = Delivery::listen_only(Arc::clone(delivery.message()));
                    self.again.push_back(copy);
                }
                Poll::Ready(Some(Ok(delivery)))
            }
            other => other,
        }
    }
}
