//! Commands for one aggregate instance take turns within a process: racing commands do not
//! conflict with one another, and a reaction dispatching to the same instance does not wait for
//! its own turn. Instances kept between commands spare the reads, and stay right when another
//! process writes to the stream or a command is delivered twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    Aggregate, AppendRequest, AppendResult, DomainEvent, Effect, EventStore, EventStoreError, GlobalPosition, PendingPublication, PruneReport, Reaction,
    RecordedEvent, SerializedEvent, Snapshot, StreamId, Topic, Version,
};
use composable_rust_runtime::{AggregateHandler, Executor};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
struct Add {
    id: String,
    n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Added {
    n: u64,
}

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added.v1"
    }
}

/// Sums what was added. An addition of more than 100 reacts by adding 1 to the same instance.
struct Tally;

impl Aggregate for Tally {
    const AGGREGATE_TYPE: &'static str = "tally";
    type State = u64;
    type Command = Add;
    type Event = Added;
    type Error = std::convert::Infallible;
    type Environment = ();

    fn aggregate_id(command: &Add) -> &str {
        &command.id
    }

    fn initial_state(_id: &str) -> u64 {
        0
    }

    fn handle(&self, _sum: &u64, command: Add, (): &()) -> Result<Vec<Added>, Self::Error> {
        Ok(vec![Added { n: command.n }])
    }

    fn apply(sum: &mut u64, event: &Added) {
        *sum += event.n;
    }

    fn react(&self, _sum: &u64, events: &[Added], (): &()) -> Vec<Reaction> {
        let id = "t".to_string();
        events.iter().filter(|e| e.n > 100).map(|_| Effect::dispatch(Add { id: id.clone(), n: 1 })).collect()
    }
}

/// The in-memory store with reads that take a little while (as over a network), so racing loads
/// really do see the same version; counts refused appends.
struct SlowReads {
    inner: InMemoryEventStore,
    conflicts: AtomicU32,
    reads: AtomicU32,
}

#[async_trait]
impl EventStore for SlowReads {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        let result = self.inner.append(request).await;
        if matches!(result, Err(EventStoreError::ConcurrencyConflict { .. })) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
    async fn read_stream(&self, s: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.inner.read_stream(s, from, limit).await
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Version, EventStoreError> {
        self.inner.stream_version(s).await
    }
    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), EventStoreError> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, s: &StreamId) -> Result<Option<Snapshot>, EventStoreError> {
        self.inner.load_snapshot(s).await
    }
    async fn pending_publications(&self, limit: usize) -> Result<Vec<PendingPublication>, EventStoreError> {
        self.inner.pending_publications(limit).await
    }
    async fn mark_published(&self, id: uuid::Uuid, topic: &Topic) -> Result<(), EventStoreError> {
        self.inner.mark_published(id, topic).await
    }
    async fn prune(&self, horizon: DateTime<Utc>) -> Result<PruneReport, EventStoreError> {
        self.inner.prune(horizon).await
    }
    async fn claim_due_deadlines(
        &self,
        consumer: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<composable_rust_core::ClaimedDeadline>, EventStoreError> {
        self.inner.claim_due_deadlines(consumer, now, lease, limit).await
    }
    async fn complete_deadline(&self, id: uuid::Uuid) -> Result<(), EventStoreError> {
        self.inner.complete_deadline(id).await
    }
    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<composable_rust_core::StoredDeadline>, EventStoreError> {
        self.inner.deadlines(consumer, instance, limit).await
    }
}

fn slow_store() -> Arc<SlowReads> {
    Arc::new(SlowReads { inner: InMemoryEventStore::new(), conflicts: AtomicU32::new(0), reads: AtomicU32::new(0) })
}

/// A handler on `store` as one process would have it.
fn process(store: &Arc<SlowReads>) -> AggregateHandler<Tally> {
    AggregateHandler::new(Tally, (), Executor::builder().store(store.clone()).bus(Arc::new(InMemoryEventBus::new())).build())
}

fn tally() -> (Arc<SlowReads>, Arc<AggregateHandler<Tally>>) {
    let store = slow_store();
    // One attempt: a command that meets a conflict fails instead of quietly deciding again.
    let handler = process(&store).with_max_attempts(1).register().expect("register");
    (store, handler)
}

fn add(n: u64) -> Add {
    Add { id: "t".into(), n }
}

async fn stored_sum(store: &SlowReads, id: &str) -> (usize, u64) {
    let stream = AggregateHandler::<Tally>::stream_id(id).expect("stream id");
    let events = read_stream_to_end(store, &stream, Version(1)).await.expect("read");
    let sum = events.iter().map(|e| Added::from_serialized(e).expect("decode").n).sum();
    (events.len(), sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commands_for_one_instance_do_not_conflict_in_one_process() {
    let (store, handler) = tally();
    let sends = (1..=24).map(|n| {
        let handler = Arc::clone(&handler);
        tokio::spawn(async move { handler.send(Add { id: "t".into(), n }).await })
    });
    for send in futures::future::join_all(sends).await {
        send.expect("task").expect("every command lands at its first attempt");
    }
    assert_eq!(store.conflicts.load(Ordering::SeqCst), 0, "appends refused for a version another command of this process took");
    assert_eq!(stored_sum(&store, "t").await, (24, (1..=24).sum()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_may_dispatch_to_its_own_instance() {
    let (store, handler) = tally();
    let sent = tokio::time::timeout(Duration::from_secs(20), handler.send(Add { id: "t".into(), n: 1000 })).await;
    sent.expect("the reaction waited for the turn its own command held").expect("handled");
    assert_eq!(stored_sum(&store, "t").await, (2, 1001));
}

#[tokio::test]
async fn a_kept_instance_is_not_read_again_and_without_the_cache_every_command_reads() {
    let store = slow_store();
    let kept = process(&store);
    for n in 1..=10 {
        kept.send(add(n)).await.expect("handled");
    }
    assert_eq!(store.reads.load(Ordering::SeqCst), 1, "one load, then the kept instance");
    assert_eq!(kept.cached_instances(), 1);

    let store = slow_store();
    let uncached = process(&store).with_cache_capacity(0);
    for n in 1..=10 {
        uncached.send(add(n)).await.expect("handled");
    }
    assert_eq!(store.reads.load(Ordering::SeqCst), 10);
    assert_eq!(stored_sum(&store, "t").await, (10, 55));
}

#[tokio::test]
async fn another_process_writing_meanwhile_makes_the_kept_instance_reload() {
    let store = slow_store();
    let (one, other) = (process(&store), process(&store));
    one.send(add(1)).await.expect("first");
    other.send(add(10)).await.expect("the other process");
    // `one` decides on its kept sum (1), its append expects version 1, the stream is at 2: it
    // reloads and decides again on 11.
    one.send(add(100)).await.expect("after a reload");
    assert_eq!(store.conflicts.load(Ordering::SeqCst), 1, "the stale kept instance was caught by its expected version");
    assert_eq!(stored_sum(&store, "t").await, (3, 111));
    let state = one.load("t", None).await.expect("load");
    assert_eq!((state.state, state.version), (111, Version(3)));
}

#[tokio::test]
async fn a_command_delivered_twice_lands_once_with_the_instance_kept() {
    use composable_rust_core::{AnyCommand, CommandEnvelope, CommandHandler, CommandOutcome};
    let store = slow_store();
    let handler = process(&store);
    let envelope = CommandEnvelope { command_id: uuid::Uuid::new_v4(), correlation_id: None, causation_id: None, command: AnyCommand::new(add(5)) };
    assert!(matches!(handler.handle(&envelope).await.expect("first"), CommandOutcome::Handled { .. }));
    handler.send(add(1)).await.expect("another command between");
    assert_eq!(handler.handle(&envelope).await.expect("again"), CommandOutcome::Duplicate);
    assert_eq!(store.reads.load(Ordering::SeqCst), 1, "recognised from the kept instance");
    // A fresh process, reading the stream, recognises it too.
    assert_eq!(process(&store).handle(&envelope).await.expect("elsewhere"), CommandOutcome::Duplicate);
    assert_eq!(stored_sum(&store, "t").await, (2, 6));
}
