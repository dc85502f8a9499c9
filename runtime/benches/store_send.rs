//! `Store::send`: an action with no effects, and one whose effect appends to the in-memory store and
//! publishes the stored event on the in-memory bus (awaited). The bare reducer call is measured
//! alongside as the floor.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use composable_rust_core::{Effect, EventBus, EventStore, ExpectedVersion, Reducer, SerializedEvent, StreamId, Topic, smallvec};
use composable_rust_runtime::{Executor, Store};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use criterion::{Criterion, criterion_group, criterion_main};

#[derive(Debug, Clone)]
enum Action {
    Increment,
    Nothing,
    Persist,
}

struct Env {
    stream: StreamId,
    topic: Topic,
    event: SerializedEvent,
}

struct Counter;

impl Reducer for Counter {
    type State = u64;
    type Action = Action;
    type Environment = Env;

    fn reduce(&self, state: &mut u64, action: Action, env: &Env) -> composable_rust_core::Effects<Action> {
        *state += 1;
        match action {
            Action::Increment => smallvec![],
            // `Effect::None` must cost what an empty list costs: no task.
            Action::Nothing => smallvec![Effect::None],
            Action::Persist => {
                let event = env.event.clone().with_event_id(uuid::Uuid::new_v4());
                smallvec![Effect::append(env.stream.clone(), ExpectedVersion::Any, vec![event]).publish_to(env.topic.clone()).into()]
            }
        }
    }
}

fn env() -> Env {
    Env {
        stream: StreamId::new("bench-1").unwrap(),
        topic: Topic::new("bench.events").unwrap(),
        event: SerializedEvent::new("Incremented.v1", vec![0u8; 64], None),
    }
}

/// A store whose effects run against a fresh in-memory event store and bus.
fn new_store() -> Store<Counter> {
    let event_store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryEventBus::new());
    Store::with_executor(0u64, Counter, env(), Executor::builder().store(event_store).bus(bus).build())
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("store_send");

    let reducer_env = env();
    let mut state = 0u64;
    group.bench_function("reducer_call_only", |b| b.iter(|| black_box(Counter.reduce(&mut state, black_box(Action::Increment), &reducer_env).len())));

    let store = new_store();
    group.bench_function("no_effects", |b| b.iter(|| black_box(store.send(black_box(Action::Increment)).unwrap())));

    // Effects run on a task; on a current-thread runtime the awaiting caller and the effect task share
    // the thread, so this measures the work rather than cross-thread wake-up latency.
    let local = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = {
        let _local_guard = local.enter();
        new_store()
    };
    group.bench_function("effect_none_send_and_finish", |b| b.to_async(&local).iter(|| async { store.send(Action::Nothing).unwrap().finish().await }));
    group.bench_function("append_then_publish_awaited", |b| b.to_async(&local).iter(|| async { store.send(Action::Persist).unwrap().finish().await }));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
