//! In-memory bus delivery throughput against raw `tokio::sync::broadcast`, side by side in one run.
//!
//! Each iteration publishes `BATCH` events of 64 bytes and lets every subscriber receive all of them
//! (the channel holds the batch, so nothing lags). Throughput counts deliveries (events x
//! subscribers), at 1, 1,000 and 10,000 subscribers. The raw baseline does what any `publish(&event)` must do at least: clone the
//! borrowed event into an `Arc` and `send` it; receivers `recv` it. A second raw line shares one
//! pre-built `Arc` (no clone), the floor of the channel itself.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use composable_rust_core::{EventBus, EventStream, SerializedEvent, SubscribeOptions};
use composable_rust_testing::InMemoryEventBus;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use tokio::sync::broadcast;

const BATCH: usize = 256;

fn event() -> SerializedEvent {
    SerializedEvent::new("Tick.v1", vec![7u8; 64], None)
}

async fn ours(bus: &InMemoryEventBus, streams: &mut [EventStream], event: &SerializedEvent) {
    for _ in 0..BATCH {
        bus.publish("bench.ticks", event).await.unwrap();
    }
    for s in streams.iter_mut() {
        for _ in 0..BATCH {
            let d = s.next().await.unwrap().unwrap();
            std::hint::black_box(d.event().data.len());
        }
    }
}

async fn raw(tx: &broadcast::Sender<Arc<SerializedEvent>>, rxs: &mut [broadcast::Receiver<Arc<SerializedEvent>>], event: &SerializedEvent, clone_each: bool) {
    let shared = Arc::new(event.clone());
    for _ in 0..BATCH {
        let msg = if clone_each { Arc::new(event.clone()) } else { Arc::clone(&shared) };
        let _ = tx.send(msg);
    }
    for rx in rxs.iter_mut() {
        for _ in 0..BATCH {
            let m = rx.recv().await.unwrap();
            std::hint::black_box(m.data.len());
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let event = event();
    let mut group = c.benchmark_group("in_memory_bus_delivery");
    group.measurement_time(Duration::from_secs(4));
    for subscribers in [1usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements((BATCH * subscribers) as u64));
        // An iteration at 10,000 subscribers takes tens of milliseconds.
        group.sample_size(if subscribers >= 10_000 { 10 } else { 100 });

        let bus = InMemoryEventBus::with_capacity(BATCH * 2);
        let mut streams: Vec<EventStream> = rt
            .block_on(async { futures::future::join_all((0..subscribers).map(|_| bus.subscribe_with(&["bench.ticks"], SubscribeOptions::exclusive()))).await })
            .into_iter()
            .map(Result::unwrap)
            .collect();
        group.bench_with_input(BenchmarkId::new("composable_rust_bus", subscribers), &subscribers, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        ours(&bus, &mut streams, &event).await;
                    }
                    start.elapsed()
                })
            });
        });

        for (name, clone_each) in [("raw_broadcast_clone_event", true), ("raw_broadcast_shared_arc", false)] {
            let (tx, _) = broadcast::channel(BATCH * 2);
            let mut rxs: Vec<_> = (0..subscribers).map(|_| tx.subscribe()).collect();
            group.bench_with_input(BenchmarkId::new(name, subscribers), &subscribers, |b, _| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            raw(&tx, &mut rxs, &event, clone_each).await;
                        }
                        start.elapsed()
                    })
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
