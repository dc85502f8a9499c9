//! NatsEventBus against raw async-nats JetStream calls, same server, same stream settings, same run.
//!
//! - publish: 500 events of 64 bytes, each awaited until JetStream acknowledged it, from 1 task and
//!   from 16 concurrent tasks;
//! - consume: 2,000 events already in the stream, received and acknowledged one by one through a
//!   durable pull consumer.
//!
//! The raw side publishes the same bytes (the encoded event) with the same headers (`Nats-Msg-Id`
//! and the event type/id/correlation headers), and consumes with the same consumer configuration.

#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use composable_rust_core::{EventBus, EventMetadata, SerializedEvent, SubscribeOptions};
use composable_rust_nats::{NatsConfig, NatsEventBus, Storage};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;

const PUBLISH_BATCH: usize = 500;
const CONSUME_BATCH: usize = 2_000;

fn event() -> SerializedEvent {
    SerializedEvent::new("Tick.v1", vec![7u8; 64], Some(EventMetadata::now().with_correlation_id("bench")))
}

fn headers_for(e: &SerializedEvent) -> HeaderMap {
    let mut h = HeaderMap::new();
    let id = e.event_id.to_string();
    h.insert("Nats-Msg-Id", id.as_str());
    h.insert("cr-event-id", id.as_str());
    h.insert("cr-event-type", e.event_type.as_str());
    h.insert("cr-correlation-id", "bench");
    h
}

fn config(url: &str) -> NatsConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut c = NatsConfig::new(url);
    c = c.with_stream_name(format!("CR_BENCH_{}", &id[..8]));
    c = c.with_subject_prefix(format!("bench{}", &id[..8]));
    c = c.with_storage(Storage::File);
    c
}

async fn ours_publish(bus: &Arc<NatsEventBus>, tasks: usize) {
    let per_task = PUBLISH_BATCH / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let bus = Arc::clone(bus);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    bus.publish("ticks", &event()).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
}

async fn raw_publish(js: &async_nats::jetstream::Context, subject: &str, tasks: usize) {
    let per_task = PUBLISH_BATCH / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let js = js.clone();
            let subject = subject.to_string();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let e = event();
                    let payload = e.encode().unwrap();
                    js.publish_with_headers(subject.clone(), headers_for(&e), payload).await.unwrap().await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _guard = rt.enter();
    let Some((_server, url)) = support::server() else { return };
    let cfg = config(&url);
    let bus = Arc::new(rt.block_on(NatsEventBus::connect_with(cfg.clone())).unwrap());
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    let ticks = format!("{}.ticks", cfg.subject_prefix());

    let mut group = c.benchmark_group("nats_publish_acked");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(PUBLISH_BATCH as u64));
    for tasks in [1usize, 16] {
        group.bench_with_input(BenchmarkId::new("composable_rust_bus", tasks), &tasks, |b, &t| b.to_async(&rt).iter(|| ours_publish(&bus, t)));
        group.bench_with_input(BenchmarkId::new("raw_async_nats", tasks), &tasks, |b, &t| b.to_async(&rt).iter(|| raw_publish(&js, &ticks, t)));
    }
    group.finish();

    let mut group = c.benchmark_group("nats_consume_acked");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(CONSUME_BATCH as u64));
    group.bench_function("composable_rust_bus", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let topic = format!("c{}", uuid::Uuid::new_v4().simple());
                    let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(&topic)).await.unwrap();
                    for _ in 0..CONSUME_BATCH {
                        bus.publish(&topic, &event()).await.unwrap();
                    }
                    let start = Instant::now();
                    for _ in 0..CONSUME_BATCH {
                        let d = s.next().await.unwrap().unwrap();
                        d.ack().await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    });
    group.bench_function("raw_async_nats", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let stream = js.get_stream(cfg.stream_name()).await.unwrap();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let topic = format!("c{}", uuid::Uuid::new_v4().simple());
                    let consumer = stream
                        .get_or_create_consumer(
                            &topic,
                            pull::Config {
                                durable_name: Some(topic.clone()),
                                filter_subject: format!("{}.{topic}", cfg.subject_prefix()),
                                ack_policy: AckPolicy::Explicit,
                                deliver_policy: DeliverPolicy::New,
                                max_deliver: 6,
                                ack_wait: Duration::from_secs(30),
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap();
                    let mut messages = consumer.messages().await.unwrap();
                    for _ in 0..CONSUME_BATCH {
                        bus.publish(&topic, &event()).await.unwrap();
                    }
                    let start = Instant::now();
                    for _ in 0..CONSUME_BATCH {
                        let m = messages.next().await.unwrap().unwrap();
                        std::hint::black_box(SerializedEvent::decode(&m.payload).unwrap().data.len());
                        m.ack().await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
