//! The outbox rule holds wherever an `Append` sits (top level, in `Parallel`, `Sequential`,
//! `Cancellable`): stored events and their publish intents are one write; what was stored is
//! published at least once whatever happens next; what was not stored is never published. And the
//! relay treats entries one by one: one the bus refuses does not hold back the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use composable_rust_core::event_bus::BusCause;
use composable_rust_core::{
    AppendRequest, Effect, EventBus, EventBusError, EventStore, EventStream, ExpectedVersion, OutboxIntent, Reducer, SerializedEvent, StreamId,
    SubscribeOptions, Topic, smallvec,
};
use composable_rust_runtime::outbox::{OutboxRelay, RelayConfig, relay_pending};
use composable_rust_runtime::{DeadLetterSink, Executor, InMemoryDeadLetters, RetryPolicy, Store};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use futures::StreamExt;

const TOPIC: &str = "outbox.events";

fn topic() -> Topic {
    Topic::new(TOPIC).unwrap()
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn event(label: &str) -> SerializedEvent {
    SerializedEvent::new("Happened.v1", label.as_bytes().to_vec(), None)
}

/// A bus that refuses every publish while `down` (retryably), and events larger than `max_len`
/// bytes always (for good, or retryably when `big_retryable`).
struct PickyBus {
    inner: InMemoryEventBus,
    down: AtomicBool,
    max_len: usize,
    big_retryable: bool,
}

impl PickyBus {
    fn new(down: bool, max_len: usize, big_retryable: bool) -> Arc<Self> {
        Arc::new(Self { inner: InMemoryEventBus::new(), down: AtomicBool::new(down), max_len, big_retryable })
    }
}

#[async_trait::async_trait]
impl EventBus for PickyBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(EventBusError::unavailable(BusCause::msg("broker down (test)")));
        }
        if event.data.len() > self.max_len {
            return Err(EventBusError::publish_failed(
                topic,
                BusCause::msg(format!("message of {} bytes is too large (test)", event.data.len())),
                self.big_retryable,
            ));
        }
        self.inner.publish(topic, event).await
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        self.inner.subscribe_with(topics, options).await
    }

    fn backend(&self) -> &'static str {
        "picky"
    }
}

/// Some command no handler takes: dispatching it fails.
#[derive(Debug, Clone, PartialEq)]
struct Unrouted;

#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// Appends nested in every composite.
    Nested,
    /// Appends that conflict, nested.
    Conflicting,
    /// An append, then a failing dispatch.
    AppendThenFail,
    /// A failing dispatch, then an append.
    FailThenAppend,
    /// A cancellable delay followed by an append, and its cancel.
    DelayedAppend,
    CancelDelayed,
}

struct Planner;

impl Reducer for Planner {
    type State = ();
    type Action = Plan;
    type Environment = ();

    fn reduce(&self, (): &mut (), plan: Plan, (): &()) -> composable_rust_core::Effects<Plan> {
        let append =
            |stream: &str, expected: ExpectedVersion| -> Effect<Plan> { Effect::append(sid(stream), expected, vec![event(stream)]).publish_to(topic()).into() };
        match plan {
            Plan::Nested => smallvec![
                Effect::Parallel(vec![append("p-1", ExpectedVersion::NoStream), append("p-2", ExpectedVersion::NoStream)]),
                append("c-1", ExpectedVersion::NoStream).cancellable("c"),
                Effect::Sequential(vec![append("s-1", ExpectedVersion::NoStream)]),
                Effect::Parallel(vec![append("pc-1", ExpectedVersion::NoStream).cancellable("pc")]),
            ],
            Plan::Conflicting => {
                smallvec![Effect::Parallel(vec![append("taken-1", ExpectedVersion::NoStream)]), append("taken-2", ExpectedVersion::NoStream).cancellable("c"),]
            }
            Plan::AppendThenFail => {
                smallvec![append("first", ExpectedVersion::NoStream), Effect::dispatch(Unrouted), append("never-1", ExpectedVersion::NoStream),]
            }
            Plan::FailThenAppend => {
                smallvec![Effect::Parallel(vec![Effect::Sequential(vec![Effect::dispatch(Unrouted), append("never-2", ExpectedVersion::NoStream)])])]
            }
            Plan::DelayedAppend => smallvec![
                Effect::Sequential(vec![Effect::delay(Duration::from_secs(3600), Plan::CancelDelayed), append("never-3", ExpectedVersion::NoStream)])
                    .cancellable("delayed")
            ],
            Plan::CancelDelayed => smallvec![Effect::cancel("delayed")],
        }
    }
}

struct World {
    store: Arc<InMemoryEventStore>,
    bus: Arc<PickyBus>,
    subscriber: EventStream,
    s: Store<Planner>,
}

async fn world(bus_down: bool) -> World {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = PickyBus::new(bus_down, usize::MAX, false);
    let subscriber = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    let executor = Executor::builder().store(store.clone()).bus(bus.clone()).retry(RetryPolicy::NONE).build();
    World { s: Store::with_executor((), Planner, (), executor), store, bus, subscriber }
}

/// The data of the events delivered within a short wait, sorted.
async fn delivered(subscriber: &mut EventStream) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await {
        let d = d.unwrap();
        assert!(d.event().stream_id.is_some(), "a published event is a stored one");
        out.push(String::from_utf8(d.event().data.to_vec()).unwrap());
    }
    out.sort();
    out
}

#[tokio::test]
async fn appends_nested_in_parallel_and_cancellable_store_their_outbox_intent_atomically() {
    let mut w = world(true).await;
    w.s.send(Plan::Nested).unwrap().finish().await;
    assert_eq!(w.store.event_count(), 5, "every append stored");
    assert_eq!(w.store.pending_outbox_len(), 5, "with its publish intent, though the bus is down");
    assert!(delivered(&mut w.subscriber).await.is_empty());

    w.bus.down.store(false, Ordering::SeqCst);
    let report = relay_pending(w.store.clone(), w.bus.clone()).await.unwrap();
    assert_eq!(report.published, 5);
    assert_eq!(delivered(&mut w.subscriber).await, vec!["c-1", "p-1", "p-2", "pc-1", "s-1"], "the relay published them later");
    assert_eq!(w.store.pending_outbox_len(), 0);
}

#[tokio::test]
async fn a_nested_append_that_fails_publishes_nothing() {
    let mut w = world(false).await;
    for s in ["taken-1", "taken-2"] {
        w.store.append(AppendRequest::new(sid(s), ExpectedVersion::NoStream, vec![event("before")])).await.unwrap();
    }
    w.s.send(Plan::Conflicting).unwrap().finish().await;
    assert_eq!(w.store.event_count(), 2, "nothing more stored");
    assert_eq!(w.store.pending_outbox_len(), 0, "no publish intent for a failed append");
    assert!(delivered(&mut w.subscriber).await.is_empty(), "nothing published");
}

#[tokio::test]
async fn a_later_failure_does_not_undo_an_earlier_stored_publish_and_nothing_unstored_is_published() {
    let mut w = world(false).await;
    w.s.send(Plan::AppendThenFail).unwrap().finish().await;
    assert_eq!(delivered(&mut w.subscriber).await, vec!["first"], "the stored event is published though the dispatch after it failed");
    assert_eq!(w.store.event_count(), 1, "the append after the failure was skipped");

    w.s.send(Plan::FailThenAppend).unwrap().finish().await;
    let _delayed = w.s.send(Plan::DelayedAppend).unwrap();
    w.s.send(Plan::CancelDelayed).unwrap().finish().await;
    w.s.settled().await;
    assert_eq!(w.store.event_count(), 1, "skipped and cancelled appends store nothing");
    assert_eq!(w.store.pending_outbox_len(), 0);
    assert!(delivered(&mut w.subscriber).await.is_empty(), "and publish nothing");

    // The same with the bus down: the stored event is relayed later, the rest never.
    let mut w = world(true).await;
    w.s.send(Plan::AppendThenFail).unwrap().finish().await;
    w.s.send(Plan::FailThenAppend).unwrap().finish().await;
    w.bus.down.store(false, Ordering::SeqCst);
    relay_pending(w.store.clone(), w.bus.clone()).await.unwrap();
    assert_eq!(delivered(&mut w.subscriber).await, vec!["first"]);
}

/// Stores `(stream, data)` events with an outbox intent each, in this order.
async fn outbox_with(store: &InMemoryEventStore, entries: &[(&str, SerializedEvent)]) {
    for (stream, e) in entries {
        let version = store.stream_version(&sid(stream)).await.unwrap();
        let mut request = AppendRequest::new(sid(stream), ExpectedVersion::from_loaded(version), vec![e.clone()]);
        request.outbox.push(OutboxIntent { topic: topic(), event_id: e.event_id });
        store.append(request).await.unwrap();
    }
}

fn big() -> SerializedEvent {
    SerializedEvent::new("Happened.v1", vec![b'x'; 100], None)
}

fn no_backoff() -> RetryPolicy {
    RetryPolicy { max_attempts: 10, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO }
}

#[tokio::test]
async fn an_entry_the_bus_refuses_for_good_is_dead_lettered_and_does_not_block_the_others() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = PickyBus::new(false, 16, false);
    let mut subscriber = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    let oversized = big();
    outbox_with(&store, &[("a", oversized.clone()), ("a", event("a-2")), ("b", event("b-1"))]).await;
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let mut config = RelayConfig::default().max_attempts(3);
    config.backoff = no_backoff();
    let mut relay = OutboxRelay::new(store.clone(), bus.clone(), dead_letters.clone() as Arc<dyn DeadLetterSink>, config);

    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.dead_lettered), (2, 1), "{report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["a-2", "b-1"], "the others went, the oversized one's stream included");
    let letters = dead_letters.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1, "refused for good: not retried");
    assert_eq!(letters[0].event.as_ref().map(|e| e.event_id), Some(oversized.event_id), "kept with its event");
    assert_eq!(store.pending_outbox_len(), 0, "it does not come back");
}

#[tokio::test]
async fn an_entry_refused_retryably_is_dead_lettered_after_bounded_tries_and_holds_back_only_its_stream() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = PickyBus::new(false, 16, true);
    let mut subscriber = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    outbox_with(&store, &[("a", big()), ("a", event("a-2")), ("b", event("b-1"))]).await;
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let mut config = RelayConfig::default().max_attempts(3);
    config.backoff = no_backoff();
    let mut relay = OutboxRelay::new(store.clone(), bus.clone(), dead_letters.clone() as Arc<dyn DeadLetterSink>, config);

    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.failed), (1, 1), "{report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["b-1"], "another stream is not held back; a-2 waits behind a-1 (order)");
    relay.pass().await.unwrap();
    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 1), "third attempt: dead-lettered, then a-2 goes: {report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["a-2"]);
    assert_eq!(dead_letters.letters()[0].attempts, 3);
    assert_eq!(store.pending_outbox_len(), 0);
}

#[tokio::test]
async fn a_backing_off_entry_does_not_hold_back_other_streams_even_when_it_fills_a_page() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = PickyBus::new(false, 16, true);
    let mut subscriber = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    outbox_with(&store, &[("a", big()), ("b", event("b-1")), ("c", event("c-1"))]).await;
    let mut config = RelayConfig::default().batch(1);
    config.backoff = RetryPolicy { max_attempts: 10, initial_backoff: Duration::from_secs(3600), max_backoff: Duration::from_secs(3600) };
    let mut relay = OutboxRelay::new(store.clone(), bus.clone(), Arc::new(InMemoryDeadLetters::default()), config);

    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.failed, report.deferred), (2, 1, 0), "{report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["b-1", "c-1"]);
    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.failed, report.deferred), (0, 0, 1), "the stuck entry backs off: {report:?}");
}

#[tokio::test]
async fn an_entry_stamped_far_in_the_future_does_not_hold_back_the_others() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = PickyBus::new(false, usize::MAX, false);
    let mut subscriber = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    let mut future = event("future");
    future.metadata.timestamp = chrono::Utc::now() + chrono::Duration::days(3650);
    outbox_with(&store, &[("f", future), ("n", event("now"))]).await;

    let report = relay_pending(store.clone(), bus.clone()).await.unwrap();
    assert_eq!(report.published, 2, "{report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["future", "now"]);

    // With a minimum age: measured from when the relay first saw an entry, not from its timestamp.
    let mut future = event("future-2");
    future.metadata.timestamp = chrono::Utc::now() + chrono::Duration::days(3650);
    outbox_with(&store, &[("f", future), ("n", event("now-2"))]).await;
    let mut relay =
        OutboxRelay::new(store.clone(), bus.clone(), Arc::new(InMemoryDeadLetters::default()), RelayConfig::default().min_age(Duration::from_millis(30)));
    assert_eq!(relay.pass().await.unwrap().deferred, 2, "just seen");
    tokio::time::sleep(Duration::from_millis(40)).await;
    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.deferred), (2, 0), "{report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["future-2", "now-2"]);
}

#[tokio::test]
async fn a_failed_entry_is_tried_once_per_pass_even_without_backoff_and_small_pages() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = PickyBus::new(false, 16, true);
    let mut subscriber = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    outbox_with(&store, &[("a", big()), ("b", event("b-1")), ("a", event("a-2")), ("c", event("c-1"))]).await;
    let mut config = RelayConfig::default().batch(1).max_attempts(3);
    config.backoff = no_backoff();
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let mut relay = OutboxRelay::new(store.clone(), bus.clone(), dead_letters.clone() as Arc<dyn DeadLetterSink>, config);

    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.failed, report.deferred), (2, 1, 1), "a-2 waits behind a-1: {report:?}");
    assert_eq!(delivered(&mut subscriber).await, vec!["b-1", "c-1"]);
    relay.pass().await.unwrap();
    let report = relay.pass().await.unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 1), "{report:?}");
    assert_eq!(dead_letters.letters()[0].attempts, 3, "one attempt per pass");
    assert_eq!(delivered(&mut subscriber).await, vec!["a-2"]);
}
