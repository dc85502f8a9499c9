//! The original Composable Rust side of `scripts/bench-vs-original.sh`.
//!
//! The first three workloads are copied from the original's `runtime/benches/phase1_benchmarks.rs`
//! (`reducer/increment`, `store_throughput/send_action`, `effect_overhead/effect_future`), same
//! state, reducers, runtimes and criterion settings. The fan-out workload is ours
//! (`runtime/benches/in_memory_bus.rs`) run against the original's `InMemoryEventBus`: publish 256
//! events of 64 bytes, then every subscriber receives all 256.

#![allow(missing_docs)]
#![allow(clippy::expect_used)]
#![allow(dead_code)]

use std::time::{Duration, Instant};

use composable_rust_core::event::SerializedEvent;
use composable_rust_core::event_bus::{EventBus, EventStream};
use composable_rust_core::{SmallVec, effect::Effect, reducer::Reducer, smallvec};
use composable_rust_runtime::Store;
use composable_rust_testing::mocks::InMemoryEventBus;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use futures::StreamExt;

// ---- phase1_benchmarks.rs, verbatim ----

#[derive(Clone, Debug)]
struct BenchState {
    counter: i64,
    data: Vec<u8>,
}

impl Default for BenchState {
    fn default() -> Self {
        Self { counter: 0, data: vec![0; 1024] }
    }
}

#[derive(Clone, Debug)]
enum BenchAction {
    Increment,
    Decrement,
    Reset,
    SetValue(i64),
    NoOp,
}

#[derive(Clone, Debug)]
struct BenchEnv;

#[derive(Clone)]
struct BenchReducer;

impl Reducer for BenchReducer {
    type State = BenchState;
    type Action = BenchAction;
    type Environment = BenchEnv;

    fn reduce(&self, state: &mut Self::State, action: Self::Action, _env: &Self::Environment) -> SmallVec<[Effect<Self::Action>; 4]> {
        match action {
            BenchAction::Increment => {
                state.counter += 1;
                smallvec![Effect::None]
            }
            BenchAction::Decrement => {
                state.counter -= 1;
                smallvec![Effect::None]
            }
            BenchAction::Reset => {
                state.counter = 0;
                smallvec![Effect::None]
            }
            BenchAction::SetValue(v) => {
                state.counter = v;
                smallvec![Effect::None]
            }
            BenchAction::NoOp => smallvec![Effect::None],
        }
    }
}

#[derive(Clone)]
struct EffectReducer;
impl Reducer for EffectReducer {
    type State = BenchState;
    type Action = BenchAction;
    type Environment = BenchEnv;

    fn reduce(&self, state: &mut Self::State, action: Self::Action, _env: &Self::Environment) -> SmallVec<[Effect<Self::Action>; 4]> {
        match action {
            BenchAction::NoOp => smallvec![Effect::None],
            BenchAction::Increment => {
                state.counter += 1;
                smallvec![Effect::Future(Box::pin(async { Some(BenchAction::NoOp) }))]
            }
            BenchAction::Decrement => {
                state.counter -= 1;
                smallvec![Effect::Delay { duration: Duration::from_nanos(1), action: Box::new(BenchAction::NoOp) }]
            }
            BenchAction::Reset => {
                state.counter = 0;
                smallvec![Effect::Parallel(vec![Effect::None, Effect::None, Effect::None])]
            }
            BenchAction::SetValue(_) => smallvec![Effect::Sequential(vec![Effect::None, Effect::None])],
        }
    }
}

fn reducer_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("anchor");
    group.throughput(Throughput::Elements(1));
    let reducer = BenchReducer;
    let env = BenchEnv;
    group.bench_function("reducer_call", |b| {
        let mut state = BenchState::default();
        b.iter(|| {
            let _effects = reducer.reduce(&mut state, black_box(BenchAction::Increment), &env);
        });
    });
    group.finish();
}

fn store_send(c: &mut Criterion) {
    let mut group = c.benchmark_group("anchor");
    group.throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    group.bench_function("store_send", |b| {
        let store = Store::new(BenchState::default(), BenchReducer, BenchEnv);
        b.to_async(&runtime).iter(|| async {
            let _ = store.send(black_box(BenchAction::Increment)).await;
        });
    });
    group.finish();
}

fn effect_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("anchor");
    group.throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    group.bench_function("effect_round_trip", |b| {
        let store = Store::new(BenchState::default(), EffectReducer, BenchEnv);
        b.to_async(&runtime).iter(|| async {
            let mut handle = store.send(black_box(BenchAction::Increment)).await.expect("send failed");
            handle.wait().await;
        });
    });
    group.finish();
}

// ---- fan-out (ported from our runtime/benches/in_memory_bus.rs) ----

const BATCH: usize = 256;

async fn fan_out(bus: &InMemoryEventBus, streams: &mut [EventStream], event: &SerializedEvent) {
    for _ in 0..BATCH {
        bus.publish("bench.ticks", event).await.expect("publish");
    }
    for s in streams.iter_mut() {
        for _ in 0..BATCH {
            let e = s.next().await.expect("stream open").expect("event");
            black_box(e.data.len());
        }
    }
}

fn fan_out_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let event = SerializedEvent::new("Tick.v1".to_string(), vec![7u8; 64], None);
    let mut group = c.benchmark_group("anchor");
    group.measurement_time(Duration::from_secs(4));
    for subscribers in [1usize, 1_000] {
        group.throughput(Throughput::Elements((BATCH * subscribers) as u64));
        let bus = InMemoryEventBus::new();
        let mut streams: Vec<EventStream> = rt
            .block_on(async { futures::future::join_all((0..subscribers).map(|_| bus.subscribe(&["bench.ticks"]))).await })
            .into_iter()
            .map(|r| r.expect("subscribe"))
            .collect();
        group.bench_with_input(BenchmarkId::new("fan_out_256", subscribers), &subscribers, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        fan_out(&bus, &mut streams, &event).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, reducer_call, store_send, effect_round_trip, fan_out_bench);
criterion_main!(benches);
