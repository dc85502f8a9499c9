//! The metrics the runtime records (`composable_rust_runtime::metrics`) equal what happened: a saga
//! and aggregate flow with a rejection, a failing dispatch, a redelivery; the outbox relay; the lag
//! gauges of projections and subscriptions.
//!
//! Each test records into a `DebuggingRecorder` of its own, installed for its thread only, with a
//! current-thread runtime (every task runs on that thread), so tests running in parallel never see
//! each other's counts.

mod observability_support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    AppendRequest, Effect, EventBus, EventFilter, EventStore, ExpectedVersion, RecordedEvent, SerializedEvent, StreamId, Topic, Version,
};
use composable_rust_runtime::metrics::{self as m, MetricType};
use composable_rust_runtime::outbox::{OutboxRelay, RelayConfig};
use composable_rust_runtime::{AggregateHandler, Executor, InMemoryDeadLetters, Projection, ProjectionError, ProjectionRunner, StoreSubscription, View};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use observability_support::{Order, Shop, TOPIC, eventually};

/// Runs `test` on a current-thread runtime with a recorder of its own (initialised as an
/// application does: `metrics::init`); returns its snapshotter.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || {
        m::init();
        rt.block_on(test());
    });
    snapshotter
}

/// The recorded values, by name and sorted `label=value` pairs.
struct Recorded(HashMap<MetricId, (MetricKind, DebugValue)>);

/// A metric's name and its sorted labels.
type MetricId = (String, Vec<(String, String)>);

impl Recorded {
    fn of(snapshotter: &Snapshotter) -> Self {
        let mut out = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key: CompositeKey = key;
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            labels.sort();
            out.insert((key.name().to_owned(), labels), (kind, value));
        }
        Self(out)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&(MetricKind, DebugValue)> {
        let mut labels: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        labels.sort();
        self.0.get(&(name.to_owned(), labels))
    }

    /// A counter's value; 0 if it was never incremented.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            None => 0,
            Some((MetricKind::Counter, DebugValue::Counter(n))) => *n,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some((MetricKind::Gauge, DebugValue::Gauge(v))) => v.into_inner(),
            other => panic!("{name} {labels:?} is not a recorded gauge: {other:?}"),
        }
    }

    fn observations(&self, name: &str) -> Vec<f64> {
        match self.get(name, &[]) {
            None => Vec::new(),
            Some((MetricKind::Histogram, DebugValue::Histogram(v))) => v.iter().map(|x| x.into_inner()).collect(),
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// Every recorded name is one the module documents, with the labels it documents.
    fn assert_documented(&self) {
        for (name, labels) in self.0.keys() {
            let info = m::ALL.iter().find(|i| i.name == name).unwrap_or_else(|| panic!("{name} is recorded but not in metrics::ALL"));
            let mut documented: Vec<&str> = info.labels.to_vec();
            documented.sort_unstable();
            let used: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(used, documented, "labels of {name}");
        }
        for ((name, _), (kind, _)) in &self.0 {
            let info = m::ALL.iter().find(|i| i.name == name).unwrap();
            let expected = match info.kind {
                MetricType::Counter => MetricKind::Counter,
                MetricType::Gauge => MetricKind::Gauge,
                MetricType::Histogram => MetricKind::Histogram,
                _ => unreachable!(),
            };
            assert_eq!(*kind, expected, "type of {name}");
        }
    }
}

const SAGA: (&str, &str) = ("saga", "shipping");

#[test]
fn a_saga_flow_is_counted_as_it_happened() {
    let mut saga_stats = None;
    let mut dead_letters = 0;
    let snapshotter = recorded(|| async {
        let shop = Shop::new();
        let worker = shop.spawn_shipping().await;
        // Three orders ship; one is refused shipping (handled by the saga); one makes the saga
        // dispatch a command nobody handles (the step is dead-lettered).
        for id in ["o-1", "o-2", "o-3", "o-4-noship", "lost-5"] {
            shop.place(id).await;
        }
        let finished = |s: composable_rust_runtime::saga_runner::SagaStatsSnapshot| s.applied + s.dead_lettered;
        eventually("the saga's steps", || finished(worker.stats()) == 8).await;
        // A redelivery of o-1's placement: recognised, its effects run again (idempotently).
        let stream = AggregateHandler::<Order>::stream_id("o-1").unwrap();
        let placed = read_stream_to_end(&*shop.store, &stream, Version(1)).await.unwrap().remove(0);
        shop.bus.publish(TOPIC, &placed).await.unwrap();
        eventually("the redelivery", || worker.stats().duplicates == 1).await;
        saga_stats = Some(worker.shutdown().await);
        dead_letters = shop.dead_letters.total();
    });
    let r = Recorded::of(&snapshotter);
    r.assert_documented();
    let stats = saga_stats.unwrap();

    // Saga steps mirror the worker's own counters.
    assert_eq!(r.counter(m::SAGA_STEPS, &[SAGA, ("outcome", "applied")]), stats.applied);
    assert_eq!(stats.applied, 7, "4 placements (o-1..o-4) and 3 shipments");
    assert_eq!(r.counter(m::SAGA_STEPS, &[SAGA, ("outcome", "duplicate")]), 1);
    assert_eq!(r.counter(m::SAGA_STEPS, &[SAGA, ("outcome", "dead_lettered")]), stats.dead_lettered);
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(r.counter(m::SAGA_STEPS, &[SAGA, ("outcome", "skipped")]), 0);
    assert_eq!(r.counter(m::SAGA_RETRIES, &[SAGA]), stats.redelivery_requests);

    // Commands: 5 placed, 3 shipped, one refused, one redelivered dispatch.
    let order = ("aggregate", "order");
    assert_eq!(r.counter(m::COMMANDS_HANDLED, &[order, ("outcome", "handled")]), 8);
    assert_eq!(r.counter(m::COMMANDS_HANDLED, &[order, ("outcome", "rejected")]), 1);
    assert_eq!(r.counter(m::COMMANDS_HANDLED, &[order, ("outcome", "duplicate")]), 1);
    assert_eq!(r.counter(m::COMMANDS_HANDLED, &[order, ("outcome", "failed")]), 0);
    assert_eq!(r.counter(m::COMMANDS_DISPATCHED, &[("outcome", "handled")]), 3);
    assert_eq!(r.counter(m::COMMANDS_DISPATCHED, &[("outcome", "rejected")]), 1);
    assert_eq!(r.counter(m::COMMANDS_DISPATCHED, &[("outcome", "duplicate")]), 1);
    assert_eq!(r.counter(m::COMMANDS_DISPATCHED, &[("outcome", "failed")]), 1, "the command nobody handles");

    // Effects by kind.
    assert_eq!(r.counter(m::EFFECTS, &[("kind", "append")]), 8, "one per handled command");
    assert_eq!(r.counter(m::EFFECTS, &[("kind", "dispatch")]), 6);
    assert_eq!(r.counter(m::EFFECTS, &[("kind", "publish")]), 0, "the publish after the failed dispatch never ran");
    assert_eq!(r.counter(m::EFFECTS_FAILED, &[("kind", "dispatch")]), 1, "a rejection is not an effect failure");
    assert_eq!(r.counter(m::EFFECTS_FAILED, &[("kind", "append")]), 0);
    assert_eq!(r.counter(m::EFFECTS_SKIPPED, &[("kind", "publish")]), 1);
    assert_eq!(r.counter(m::APPEND_CONFLICTS, &[]), 0);

    // Store and bus: 8 domain events and 9 step records (8 deliveries, 1 follow-up) stored, the 8
    // domain events published; one duration per call.
    assert_eq!(r.counter(m::EVENTS_APPENDED, &[]), 17);
    assert_eq!(r.counter(m::EVENTS_PUBLISHED, &[]), 8);
    let appends = r.observations(m::APPEND_DURATION);
    assert_eq!(appends.len(), 17);
    assert!(appends.iter().all(|s| (0.0..60.0).contains(s)), "durations in seconds: {appends:?}");
    assert_eq!(r.observations(m::PUBLISH_DURATION).len(), 8);

    // The executor dead-lettered the dispatch, the runner the step: the sink holds both.
    assert_eq!(r.counter(m::DEAD_LETTERS, &[]), dead_letters);
    assert_eq!(dead_letters, 2);
}

#[test]
fn the_outbox_relay_reports_what_it_published_and_what_is_left() {
    let snapshotter = recorded(|| async {
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        // No bus: the events stay in the outbox.
        let executor = Executor::builder().store(store.clone()).build();
        let topic = Topic::new("shop.outbox").unwrap();
        let events = (0..3).map(|k| SerializedEvent::new("Noted.v1", vec![k], None)).collect();
        let append = Effect::<()>::append(StreamId::new("note-1").unwrap(), ExpectedVersion::NoStream, events).publish_to(topic);
        let feedback: composable_rust_runtime::Feedback<()> = Arc::new(|_, ()| {});
        executor.run(vec![append.into()], &feedback, &composable_rust_runtime::ExecutionScope::default()).await.unwrap();

        let letters = Arc::new(InMemoryDeadLetters::default());
        let mut young = OutboxRelay::new(store.clone(), bus.clone(), letters.clone(), RelayConfig::default().min_age(Duration::from_secs(3600)));
        let report = young.pass().await.unwrap();
        assert_eq!((report.published, report.deferred), (0, 3));
        let mut relay = OutboxRelay::new(store, bus, letters, RelayConfig::default());
        assert_eq!(relay.pass().await.unwrap().published, 3);
    });
    let r = Recorded::of(&snapshotter);
    r.assert_documented();
    assert_eq!(r.counter(m::OUTBOX_RELAYED, &[]), 3);
    assert!(r.gauge(m::OUTBOX_PENDING, &[]).abs() < f64::EPSILON, "nothing left after the second pass");
    assert_eq!(r.counter(m::EVENTS_APPENDED, &[]), 3);
    assert_eq!(r.counter(m::EVENTS_PUBLISHED, &[]), 3, "published by the relay");
    assert_eq!(r.observations(m::PUBLISH_DURATION).len(), 3);
}

#[test]
fn the_outbox_gauge_counts_entries_held_back() {
    let snapshotter = recorded(|| async {
        let store = Arc::new(InMemoryEventStore::new());
        let executor = Executor::builder().store(store.clone()).build();
        let events = (0..2).map(|k| SerializedEvent::new("Noted.v1", vec![k], None)).collect();
        let append = Effect::<()>::append(StreamId::new("note-1").unwrap(), ExpectedVersion::NoStream, events).publish_to(Topic::new("shop.outbox").unwrap());
        let feedback: composable_rust_runtime::Feedback<()> = Arc::new(|_, ()| {});
        executor.run(vec![append.into()], &feedback, &composable_rust_runtime::ExecutionScope::default()).await.unwrap();
        let bus = Arc::new(InMemoryEventBus::new());
        let config = RelayConfig::default().min_age(Duration::from_secs(3600));
        OutboxRelay::new(store, bus, Arc::new(InMemoryDeadLetters::default()), config).pass().await.unwrap();
    });
    let r = Recorded::of(&snapshotter);
    assert!((r.gauge(m::OUTBOX_PENDING, &[]) - 2.0).abs() < f64::EPSILON);
    assert_eq!(r.counter(m::OUTBOX_RELAYED, &[]), 0);
}

struct Noop;

#[async_trait]
impl Projection for Noop {
    const NAME: &'static str = "noop";

    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    async fn apply(&self, _: &RecordedEvent, _: &mut View<'_>) -> Result<(), ProjectionError> {
        Ok(())
    }
}

#[test]
fn lag_gauges_follow_status() {
    let mut lags = Vec::new();
    let snapshotter = recorded(|| async {
        let store = Arc::new(InMemoryEventStore::new());
        let events = (0..3).map(|k| SerializedEvent::new("Noted.v1", vec![k], None)).collect();
        store.append(AppendRequest::new(StreamId::new("note-1").unwrap(), ExpectedVersion::NoStream, events)).await.unwrap();
        let runner = ProjectionRunner::new(Noop, store.clone(), store.clone());
        let reader = runner.reader::<serde_json::Value>();
        lags.push(reader.status().await.unwrap().lag_events);
        let mut feed = StoreSubscription::new(store.clone(), EventFilter::all()).named("feed");
        lags.push(feed.status().await.unwrap().lag_events);
        runner.catch_up().await.unwrap();
        lags.push(reader.status().await.unwrap().lag_events);
        assert_eq!(feed.next_batch().await.unwrap().len(), 3);
        lags.push(feed.status().await.unwrap().lag_events);
    });
    assert_eq!(lags, [3, 3, 0, 0]);
    let r = Recorded::of(&snapshotter);
    r.assert_documented();
    let name = |n: &'static str| [("name", n)];
    assert!(r.gauge(m::PROJECTION_LAG_EVENTS, &name("noop")).abs() < f64::EPSILON);
    assert!(r.gauge(m::PROJECTION_LAG_SECONDS, &name("noop")).abs() < f64::EPSILON);
    assert!(r.gauge(m::SUBSCRIPTION_LAG_EVENTS, &name("feed")).abs() < f64::EPSILON);
    assert!(r.gauge(m::SUBSCRIPTION_LAG_SECONDS, &name("feed")).abs() < f64::EPSILON);
}

#[test]
fn lag_gauges_show_a_lagging_reader() {
    let snapshotter = recorded(|| async {
        let store = Arc::new(InMemoryEventStore::new());
        let events = (0..5).map(|k| SerializedEvent::new("Noted.v1", vec![k], None)).collect();
        store.append(AppendRequest::new(StreamId::new("note-1").unwrap(), ExpectedVersion::NoStream, events)).await.unwrap();
        let runner = ProjectionRunner::new(Noop, store.clone(), store.clone());
        runner.reader::<serde_json::Value>().status().await.unwrap();
        StoreSubscription::new(store.clone(), EventFilter::all()).named("feed").status().await.unwrap();
        // Unnamed subscriptions record nothing.
        StoreSubscription::new(store, EventFilter::all()).status().await.unwrap();
    });
    let r = Recorded::of(&snapshotter);
    assert!((r.gauge(m::PROJECTION_LAG_EVENTS, &[("name", "noop")]) - 5.0).abs() < f64::EPSILON);
    assert!((r.gauge(m::SUBSCRIPTION_LAG_EVENTS, &[("name", "feed")]) - 5.0).abs() < f64::EPSILON);
    assert_eq!(r.0.keys().filter(|(n, _)| n == m::SUBSCRIPTION_LAG_EVENTS).count(), 1);
}

#[test]
fn init_gives_each_metric_its_help_and_unit() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || {
        m::init();
        rt.block_on(async {
            let store = Arc::new(InMemoryEventStore::new());
            let executor = Executor::builder().store(store).build();
            let append =
                Effect::<()>::append(StreamId::new("note-1").unwrap(), ExpectedVersion::NoStream, vec![SerializedEvent::new("Noted.v1", vec![1], None)]);
            let feedback: composable_rust_runtime::Feedback<()> = Arc::new(|_, ()| {});
            executor.run(vec![append.into()], &feedback, &composable_rust_runtime::ExecutionScope::default()).await.unwrap();
        });
    });
    let described: HashMap<String, (Option<metrics::Unit>, Option<String>)> =
        snapshotter.snapshot().into_vec().into_iter().map(|(key, unit, help, _)| (key.key().name().to_owned(), (unit, help.map(|h| h.to_string())))).collect();
    for name in [m::EVENTS_APPENDED, m::APPEND_DURATION, m::EFFECTS] {
        let info = m::ALL.iter().find(|i| i.name == name).unwrap();
        assert_eq!(described[name], (info.unit, Some(info.help.to_owned())), "{name}");
    }
    assert_eq!(described[m::APPEND_DURATION].0, Some(metrics::Unit::Seconds));
}

#[test]
fn the_guide_lists_every_metric() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md")).expect("docs/observability.md");
    for info in m::ALL {
        assert!(guide.contains(&format!("`{}`", info.name)), "docs/observability.md does not list {}", info.name);
        assert!(!info.help.is_empty());
    }
}
