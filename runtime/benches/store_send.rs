//! `Store::send`: an action with no effects, and one whose effects append to the in-memory store and
//! publish on the in-memory bus (awaited). The bare reducer call is measured alongside as the floor.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use composable_rust_core::{Effect, EventBus, EventStore, ExpectedVersion, Reducer, SerializedEvent, StreamId, smallvec};
use composable_rust_runtime::Store;
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use criterion::{Criterion, criterion_group, criterion_main};

#[derive(Debug, Clone)]
enum Action {
    Increment,
    Persist,
}

struct Env {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    stream: StreamId,
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
            Action::Persist => {
                let event = env.event.clone().with_event_id(uuid::Uuid::new_v4());
                smallvec![
                    Effect::append_events(Arc::clone(&env.store), env.stream.clone(), ExpectedVersion::Any, vec![event.clone()]),
                    Effect::publish(Arc::clone(&env.bus), "bench.events", event),
                ]
            }
        }
    }
}

fn env() -> Env {
    Env {
        store: Arc::new(InMemoryEventStore::new()),
        bus: Arc::new(InMemoryEventBus::new()),
        stream: StreamId::new("bench-1").unwrap(),
        event: SerializedEvent::new("Incremented.v1", vec![0u8; 64], None),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("store_send");

    let reducer_env = env();
    let mut state = 0u64;
    group.bench_function("reducer_call_only", |b| b.iter(|| black_box(Counter.reduce(&mut state, black_box(Action::Increment), &reducer_env).len())));

    let store = Store::new(0u64, Counter, env());
    group.bench_function("no_effects", |b| b.iter(|| black_box(store.send(black_box(Action::Increment)).unwrap())));

    // Effects run on a task; on a current-thread runtime the awaiting caller and the effect task share
    // the thread, so this measures the work rather than cross-thread wake-up latency.
    let local = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = {
        let _local_guard = local.enter();
        Store::new(0u64, Counter, env())
    };
    group.bench_function("append_then_publish_awaited", |b| b.to_async(&local).iter(|| async { store.send(Action::Persist).unwrap().finish().await }));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
