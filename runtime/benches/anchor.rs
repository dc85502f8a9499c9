//! Our side of `scripts/bench-vs-original.sh`: the workloads of the original Composable Rust
//! (jonathanbelolo/composable-rust), ported line for line to our API. Its side is
//! `bench/anchor/original/benches/anchor.rs`; the benchmark ids are the same on both sides.
//!
//! - `anchor/reducer_call`, `anchor/store_send`, `anchor/effect_round_trip`: the original's
//!   `runtime/benches/phase1_benchmarks.rs` (`reducer/increment`, `store_throughput/send_action`,
//!   `effect_overhead/effect_future`): a 1 KiB state, a reducer returning `[Effect::None]`, a
//!   current-thread runtime, and an `Effect::Run` (the original's `Effect::Future`) feeding one
//!   action back, awaited.
//! - `anchor/fan_out_256/{1,1000}`: publish 256 events of 64 bytes on the in-memory bus, then every
//!   subscriber receives all 256 (as `in_memory_bus.rs`).
//! - `anchor/reducer_call_empty`, `anchor/store_send_empty`: ours only, the same with a reducer
//!   returning `[]`.

#![allow(missing_docs, dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use composable_rust_core::{Effect, Effects, EventBus, EventStream, Reducer, SerializedEvent, SubscribeOptions, smallvec};
use composable_rust_runtime::Store;
use composable_rust_testing::InMemoryEventBus;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;

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

    fn reduce(&self, state: &mut Self::State, action: Self::Action, _env: &Self::Environment) -> Effects<Self::Action> {
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

/// `BenchReducer` returning `[]` where it returns `[Effect::None]` (ours only).
#[derive(Clone)]
struct EmptyReducer;

impl Reducer for EmptyReducer {
    type State = BenchState;
    type Action = BenchAction;
    type Environment = BenchEnv;

    fn reduce(&self, state: &mut Self::State, action: Self::Action, _env: &Self::Environment) -> Effects<Self::Action> {
        if let BenchAction::Increment = action {
            state.counter += 1;
        }
        smallvec![]
    }
}

#[derive(Clone)]
struct EffectReducer;

impl Reducer for EffectReducer {
    type State = BenchState;
    type Action = BenchAction;
    type Environment = BenchEnv;

    fn reduce(&self, state: &mut Self::State, action: Self::Action, _env: &Self::Environment) -> Effects<Self::Action> {
        match action {
            BenchAction::NoOp => smallvec![Effect::None],
            BenchAction::Increment => {
                state.counter += 1;
                smallvec![Effect::Run(Box::pin(async { Some(BenchAction::NoOp) }))]
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
    let env = BenchEnv;
    group.bench_function("reducer_call", |b| {
        let mut state = BenchState::default();
        b.iter(|| {
            let _effects = BenchReducer.reduce(&mut state, black_box(BenchAction::Increment), &env);
        });
    });
    group.bench_function("reducer_call_empty", |b| {
        let mut state = BenchState::default();
        b.iter(|| {
            let _effects = EmptyReducer.reduce(&mut state, black_box(BenchAction::Increment), &env);
        });
    });
    group.finish();
}

fn store_send(c: &mut Criterion) {
    let mut group = c.benchmark_group("anchor");
    group.throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    group.bench_function("store_send", |b| {
        let store = Store::new(BenchState::default(), BenchReducer, BenchEnv);
        b.to_async(&runtime).iter(|| async {
            let _ = store.send(black_box(BenchAction::Increment));
        });
    });
    group.bench_function("store_send_empty", |b| {
        let store = Store::new(BenchState::default(), EmptyReducer, BenchEnv);
        b.to_async(&runtime).iter(|| async {
            let _ = store.send(black_box(BenchAction::Increment));
        });
    });
    group.finish();
}

fn effect_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("anchor");
    group.throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    group.bench_function("effect_round_trip", |b| {
        let store = Store::new(BenchState::default(), EffectReducer, BenchEnv);
        b.to_async(&runtime).iter(|| async {
            store.send(black_box(BenchAction::Increment)).unwrap().finish().await;
        });
    });
    group.finish();
}

const BATCH: usize = 256;

async fn fan_out(bus: &InMemoryEventBus, streams: &mut [EventStream], event: &SerializedEvent) {
    for _ in 0..BATCH {
        bus.publish("bench.ticks", event).await.unwrap();
    }
    for s in streams.iter_mut() {
        for _ in 0..BATCH {
            let d = s.next().await.unwrap().unwrap();
            black_box(d.event().data.len());
        }
    }
}

fn fan_out_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let event = SerializedEvent::new("Tick.v1", vec![7u8; 64], None);
    let mut group = c.benchmark_group("anchor");
    group.measurement_time(Duration::from_secs(4));
    for subscribers in [1usize, 1_000] {
        group.throughput(Throughput::Elements((BATCH * subscribers) as u64));
        let bus = InMemoryEventBus::with_capacity(BATCH * 2);
        let mut streams: Vec<EventStream> = rt
            .block_on(async { futures::future::join_all((0..subscribers).map(|_| bus.subscribe_with(&["bench.ticks"], SubscribeOptions::exclusive()))).await })
            .into_iter()
            .map(Result::unwrap)
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
