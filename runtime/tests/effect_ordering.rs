//! The executor runs the effects of one `reduce` in the order returned: an append that fails
//! publishes nothing and feeds its `on_error` back; an append that is stored publishes its events
//! (through the outbox, so a failed publish is relayed later).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::event_store::{PruneReport, StoreCause};
use composable_rust_core::{
    AppendRequest, AppendResult, Effect, EventBus, EventBusError, EventStore, EventStoreError, EventStream, ExpectedVersion, GlobalPosition,
    PendingPublication, RecordedEvent, Reducer, SerializedEvent, Snapshot, StreamId, SubscribeOptions, Topic, Version, smallvec,
};
use composable_rust_runtime::outbox::{OutboxRelay, RelayConfig, relay_pending};
use composable_rust_runtime::{DeadLetterSink, Executor, InMemoryDeadLetters, RetryPolicy, Store, StoreError};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use futures::StreamExt;
use parking_lot::Mutex;

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Place(ExpectedVersion),
    Appended(Version),
    AppendFailed(String),
}

#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    log: Vec<String>,
}

struct PlaceReducer;

fn stream() -> StreamId {
    StreamId::new("order-1").unwrap()
}

fn order_events() -> Topic {
    Topic::new("order.events").unwrap()
}

impl Reducer for PlaceReducer {
    type State = State;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut State, action: Action, (): &()) -> composable_rust_core::Effects<Action> {
        match action {
            Action::Place(expected) => {
                let event = SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], None);
                // Publish-after-append is a property of the append: stored atomically with the outbox.
                smallvec![
                    Effect::append(stream(), expected, vec![event])
                        .publish_to(order_events())
                        .on_success(|r: AppendResult| Action::Appended(r.next_expected_version))
                        .on_error(|e: EventStoreError| Action::AppendFailed(e.to_string()))
                        .into()
                ]
            }
            other => {
                state.log.push(format!("{other:?}"));
                smallvec![]
            }
        }
    }
}

fn executor(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>) -> composable_rust_runtime::ExecutorBuilder {
    Executor::builder().store(store).bus(bus)
}

async fn no_delivery(stream: &mut EventStream) {
    let next = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    assert!(next.is_err(), "nothing must be published, got {next:?}");
}

#[tokio::test]
async fn nothing_is_published_when_the_append_fails() {
    let store = Arc::new(InMemoryEventStore::new());
    store.append(AppendRequest::new(stream(), ExpectedVersion::NoStream, vec![SerializedEvent::new("Existing.v1", vec![0], None)])).await.unwrap();
    let bus = Arc::new(InMemoryEventBus::new());
    let mut subscriber = bus.subscribe_with(&["order.events"], SubscribeOptions::exclusive()).await.unwrap();
    let s = Store::with_executor(State::default(), PlaceReducer, (), executor(store.clone(), bus.clone()).build());

    s.send(Action::Place(ExpectedVersion::NoStream)).unwrap().finish().await;

    let log = s.state().log;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].starts_with("AppendFailed(\"concurrency conflict on stream order-1: expected version no stream, actual 1"), "{log:?}");
    no_delivery(&mut subscriber).await;
    assert_eq!(bus.stats().published(), 0);
    assert_eq!(store.event_count(), 1, "the failed append stored nothing");
    assert_eq!(store.pending_outbox_len(), 0, "no publish intent for a failed append");
}

#[tokio::test]
async fn a_stored_append_publishes_the_stored_event_and_clears_the_outbox() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(InMemoryEventBus::new());
    let mut subscriber = bus.subscribe_with(&["order.events"], SubscribeOptions::exclusive()).await.unwrap();
    let s = Store::with_executor(State::default(), PlaceReducer, (), executor(store.clone(), bus.clone()).build());

    s.send(Action::Place(ExpectedVersion::NoStream)).unwrap().finish().await;

    assert_eq!(s.state().log, vec!["Appended(Version(1))".to_string()]);
    let delivery = subscriber.next().await.unwrap().unwrap();
    assert_eq!(delivery.event().stream_id, Some(stream()), "the published event is the stored one");
    assert_eq!(delivery.event().stream_version, Some(Version(1)));
    assert_eq!(store.pending_outbox_len(), 0, "outbox entry marked after the publish");
}

/// A bus whose publishes fail while `down` is set.
struct FlakyBus {
    inner: InMemoryEventBus,
    down: AtomicBool,
    attempts: AtomicU32,
}

impl FlakyBus {
    fn new(down: bool) -> Self {
        Self { inner: InMemoryEventBus::new(), down: AtomicBool::new(down), attempts: AtomicU32::new(0) }
    }
}

#[async_trait]
impl EventBus for FlakyBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(EventBusError::unavailable(BusCause::msg("broker down (test)")));
        }
        self.inner.publish(topic, event).await
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        self.inner.subscribe_with(topics, options).await
    }

    fn backend(&self) -> &'static str {
        "flaky"
    }
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts: attempts, initial_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(2) }
}

#[tokio::test]
async fn a_failed_publish_stays_in_the_outbox_and_the_relay_publishes_it() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(FlakyBus::new(true));
    let mut subscriber = bus.subscribe_with(&["order.events"], SubscribeOptions::exclusive()).await.unwrap();
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let executor = executor(store.clone(), bus.clone()).retry(fast_retry(3)).dead_letters(dead_letters.clone() as Arc<dyn DeadLetterSink>).build();
    let s = Store::with_executor(State::default(), PlaceReducer, (), executor);

    s.send(Action::Place(ExpectedVersion::NoStream)).unwrap().finish().await;

    assert_eq!(s.state().log, vec!["Appended(Version(1))".to_string()], "the append succeeded; its publish failing does not fail it");
    assert_eq!(bus.attempts.load(Ordering::SeqCst), 3, "a retryable publish error is retried up to the policy");
    assert_eq!(dead_letters.total(), 0, "nothing is lost: the entry stays in the outbox for the relay");
    assert_eq!(store.pending_outbox_len(), 1, "the publish intent survives the failure");

    bus.down.store(false, Ordering::SeqCst);
    let report = relay_pending(store.clone(), bus.clone()).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(store.pending_outbox_len(), 0);
    let delivery = subscriber.next().await.unwrap().unwrap();
    assert_eq!(delivery.event().stream_version, Some(Version(1)));
}

#[tokio::test]
async fn the_periodic_relay_leaves_entries_it_has_just_seen_whatever_their_timestamp() {
    // Ported: "young" used to be judged by the event's timestamp (a writer's clock); it is now how
    // long this relay has known the entry, so a writer with a fast or slow clock holds nothing back.
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(InMemoryEventBus::new());
    let mut subscriber = bus.subscribe_with(&["order.events"], SubscribeOptions::exclusive()).await.unwrap();
    let request = |label: &str, age: chrono::Duration| {
        let mut event = SerializedEvent::new("OrderPlaced.v1", label.as_bytes().to_vec(), None);
        event.metadata.timestamp = Utc::now() - age;
        let mut request = AppendRequest::new(StreamId::new(label).unwrap(), ExpectedVersion::NoStream, vec![event]);
        request.outbox.push(composable_rust_core::OutboxIntent { topic: order_events(), event_id: request.events[0].event_id });
        request
    };
    store.append(request("old", chrono::Duration::minutes(10))).await.unwrap();
    store.append(request("young", chrono::Duration::zero())).await.unwrap();

    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let mut relay = OutboxRelay::new(store.clone(), bus.clone(), dead_letters, RelayConfig::default().min_age(Duration::from_millis(50)));
    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.deferred), (0, 2), "both were just seen by this relay");
    assert_eq!(store.pending_outbox_len(), 2);

    tokio::time::sleep(Duration::from_millis(60)).await;
    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.deferred), (2, 0), "once known for the minimum age, both go");
    assert_eq!(&subscriber.next().await.unwrap().unwrap().event().data[..], b"old");
    assert_eq!(&subscriber.next().await.unwrap().unwrap().event().data[..], b"young");

    store.append(request("later", chrono::Duration::zero())).await.unwrap();
    let report = relay_pending(store.clone(), bus.clone()).await.unwrap();
    assert_eq!((report.published, report.deferred), (1, 0), "without a minimum age everything goes");
    assert_eq!(&subscriber.next().await.unwrap().unwrap().event().data[..], b"later");
}

/// A store whose first `fail_first` appends are `Unavailable`, and which counts appends.
struct FlakyStore {
    inner: InMemoryEventStore,
    fail_first: u32,
    appends: AtomicU32,
}

#[async_trait]
impl EventStore for FlakyStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        if self.appends.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            return Err(EventStoreError::unavailable(StoreCause::msg("database restarting (test)")));
        }
        self.inner.append(request).await
    }
    async fn read_stream(&self, s: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
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
        now: chrono::DateTime<chrono::Utc>,
        lease: std::time::Duration,
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

#[tokio::test]
async fn retryable_store_errors_are_retried_but_conflicts_are_not() {
    let store = Arc::new(FlakyStore { inner: InMemoryEventStore::new(), fail_first: 2, appends: AtomicU32::new(0) });
    let bus = Arc::new(InMemoryEventBus::new());
    let s = Store::with_executor(State::default(), PlaceReducer, (), executor(store.clone(), bus).retry(fast_retry(4)).build());

    s.send(Action::Place(ExpectedVersion::NoStream)).unwrap().finish().await;
    assert_eq!(store.appends.load(Ordering::SeqCst), 3, "two Unavailable, then success");
    assert_eq!(s.state().log[0], "Appended(Version(1))");

    s.send(Action::Place(ExpectedVersion::NoStream)).unwrap().finish().await;
    assert_eq!(store.appends.load(Ordering::SeqCst), 4, "a conflict is tried once");
    assert!(s.state().log[1].starts_with("AppendFailed(\"concurrency conflict"), "{:?}", s.state().log);
}

/// Effects that record when they run.
struct Recorder;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Sequential,
    Parallel,
    Ping(u32),
    Delay,
}

struct RecEnv {
    order: Arc<Mutex<Vec<&'static str>>>,
    reducing: AtomicBool,
}

fn record(order: &Arc<Mutex<Vec<&'static str>>>, name: &'static str, wait_ms: u64) -> Effect<Step> {
    let order = Arc::clone(order);
    Effect::run(async move {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        order.lock().push(name);
        None
    })
}

impl Reducer for Recorder {
    type State = u32;
    type Action = Step;
    type Environment = RecEnv;

    fn reduce(&self, count: &mut u32, action: Step, env: &RecEnv) -> composable_rust_core::Effects<Step> {
        assert!(!env.reducing.swap(true, Ordering::SeqCst), "reduce re-entered");
        *count += 1;
        let effects = match action {
            Step::Sequential => smallvec![record(&env.order, "slow", 40), record(&env.order, "fast", 0)],
            Step::Parallel => smallvec![Effect::Parallel(vec![record(&env.order, "slow", 40), record(&env.order, "fast", 0)])],
            Step::Ping(0) => smallvec![],
            Step::Ping(n) => smallvec![Effect::run(async move { Some(Step::Ping(n - 1)) })],
            Step::Delay => smallvec![Effect::delay(Duration::from_secs(3600), Step::Ping(0))],
        };
        env.reducing.store(false, Ordering::SeqCst);
        effects
    }
}

fn recorder_store() -> (Store<Recorder>, Arc<Mutex<Vec<&'static str>>>) {
    let order = Arc::new(Mutex::new(Vec::new()));
    (Store::new(0, Recorder, RecEnv { order: Arc::clone(&order), reducing: AtomicBool::new(false) }), order)
}

#[tokio::test]
async fn effects_of_one_reduce_run_in_order_unless_parallel() {
    let (s, order) = recorder_store();
    s.send(Step::Sequential).unwrap().finish().await;
    assert_eq!(*order.lock(), vec!["slow", "fast"]);
    order.lock().clear();
    s.send(Step::Parallel).unwrap().finish().await;
    assert_eq!(*order.lock(), vec!["fast", "slow"]);
}

#[tokio::test]
async fn finish_waits_for_fed_back_actions_transitively() {
    let (s, _) = recorder_store();
    s.send(Step::Ping(5)).unwrap().finish().await;
    assert_eq!(s.state(), 6, "Ping(5) and the five actions its effects fed back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_are_serialised_through_one_queue() {
    let (s, _) = recorder_store();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                s.send(Step::Ping(1)).unwrap().finish().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s.settled().await;
    assert_eq!(s.state(), 2000, "every action and every fed-back action reduced once, none re-entrantly");
}

#[tokio::test]
async fn shutdown_refuses_new_actions_and_cancels_what_outlives_the_grace_period() {
    let (s, _) = recorder_store();
    let handle = s.send(Step::Delay).unwrap();
    assert!(!handle.is_finished());
    let finished_in_time = s.shutdown(Duration::from_millis(30)).await;
    assert!(!finished_in_time, "a one-hour delay cannot finish in 30 ms");
    assert_eq!(s.effects_in_flight(), 0, "the delay was cancelled");
    assert_eq!(s.send(Step::Ping(0)).unwrap_err(), StoreError::ShuttingDown);
    assert_eq!(s.state(), 1, "the delayed action never arrived");
}
