//! Publish and consume throughput through `RedpandaEventBus` against raw rdkafka clients with the
//! same settings, on the same broker, in the same run. Prints a table and the ratios.
//!
//! `cargo bench -p composable-rust-redpanda` against `KAFKA_BROKERS`, or a private tansu broker.
//! `KAFKA_BENCH_EVENTS` sets the message count (default 20,000 of 64 bytes), `KAFKA_BENCH_INFLIGHT`
//! the publishes awaited concurrently (default 256).

#![allow(missing_docs, clippy::cast_precision_loss)] // message counts far below 2^52

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use composable_rust_core::{EventBus, SerializedEvent, StreamId, SubscribeOptions, Version};
use composable_rust_redpanda::{OffsetReset, RedpandaConfig, RedpandaEventBus};
use composable_rust_testing::bench_results::{BenchLine, record};
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const PAYLOAD: [u8; 64] = [7; 64];

fn events(n: usize) -> Vec<SerializedEvent> {
    (0..n)
        .map(|i| {
            let mut e = SerializedEvent::new("OrderPlaced.v1", PAYLOAD.to_vec(), None);
            e.stream_id = Some(StreamId::new(format!("order-{}", i % 64)).unwrap());
            e.stream_version = Some(Version(i as u64));
            e
        })
        .collect()
}

async fn publish_bus(bus: &RedpandaEventBus, topic: &str, events: &[SerializedEvent], inflight: usize) -> f64 {
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(events).map(|e| bus.publish(topic, e)).buffer_unordered(inflight).collect().await;
    assert!(results.iter().all(Result::is_ok), "a publish failed");
    events.len() as f64 / start.elapsed().as_secs_f64()
}

async fn publish_raw(producer: &FutureProducer, topic: &str, events: &[SerializedEvent], inflight: usize) -> f64 {
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(events)
        .map(|e| {
            let key = e.stream_id.as_ref().unwrap().as_str().to_owned();
            async move { producer.send(FutureRecord::to(topic).key(&key).payload(&e.data[..]), Timeout::Never).await }
        })
        .buffer_unordered(inflight)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "a raw send failed");
    events.len() as f64 / start.elapsed().as_secs_f64()
}

async fn consume_bus(bus: &RedpandaEventBus, topic: &str, n: usize) -> f64 {
    let group = support::unique_topic("bench-bus");
    let mut s = bus.subscribe_with(&[topic], SubscribeOptions::group(group)).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    let start = Instant::now();
    first.ack().await.unwrap();
    for _ in 1..n {
        s.next().await.unwrap().unwrap().ack().await.unwrap();
    }
    (n - 1) as f64 / start.elapsed().as_secs_f64()
}

async fn consume_raw(bus: &RedpandaEventBus, topic: &str, n: usize) -> f64 {
    let group = support::unique_topic("bench-raw");
    let consumer: StreamConsumer = bus.config().raw_consumer_config(&group, OffsetReset::Earliest).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let first = consumer.recv().await.unwrap();
    let start = Instant::now();
    consumer.store_offset_from_message(&first).unwrap();
    drop(first);
    for _ in 1..n {
        let m = consumer.recv().await.unwrap();
        assert_eq!(m.payload().map(<[u8]>::len), Some(PAYLOAD.len()));
        consumer.store_offset_from_message(&m).unwrap();
    }
    (n - 1) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some((_broker, brokers)) = support::broker() else { return };
    let n: usize = std::env::var("KAFKA_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let inflight: usize = std::env::var("KAFKA_BENCH_INFLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let bus = RedpandaEventBus::connect_with(RedpandaConfig::new(&brokers)).await.unwrap();
        let raw: FutureProducer = bus.config().raw_producer_config().create().unwrap();
        let events = events(n);
        let (t_bus, t_raw) = (support::unique_topic("bench-pub-bus"), support::unique_topic("bench-pub-raw"));
        bus.create_topic(&t_bus, 3, 1).await.unwrap();
        bus.create_topic(&t_raw, 3, 1).await.unwrap();
        // Warm-up (connections, metadata), then the measured runs, alternating.
        publish_raw(&raw, &t_raw, &events[..n / 10], inflight).await;
        publish_bus(&bus, &t_bus, &events[..n / 10], inflight).await;
        let (mut pub_raw, mut pub_bus) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            pub_raw.push(publish_raw(&raw, &t_raw, &events, inflight).await);
            pub_bus.push(publish_bus(&bus, &t_bus, &events, inflight).await);
        }
        // Both consumers read the same messages: the bus topic's, with their cr-* headers.
        let total = n / 10 + 2 * n;
        let (mut con_raw, mut con_bus) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            con_raw.push(consume_raw(&bus, &t_bus, total).await);
            con_bus.push(consume_bus(&bus, &t_bus, total).await);
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!("kafka at {brokers}: {n} messages of {} bytes per publish run, {inflight} in flight; consume {total}; best of 2", PAYLOAD.len());
        println!("{:<44} {:>12} {:>12} {:>7}", "path", "raw msg/s", "bus msg/s", "ratio");
        println!("{:<44} {:>12.0} {:>12.0} {:>7.2}", "publish (FutureProducer vs publish)", best(&pub_raw), best(&pub_bus), best(&pub_bus) / best(&pub_raw));
        println!(
            "{:<44} {:>12.0} {:>12.0} {:>7.2}",
            "consume + ack (StreamConsumer vs subscribe)",
            best(&con_raw),
            best(&con_bus),
            best(&con_bus) / best(&con_raw)
        );
        println!("runs: publish raw {pub_raw:.0?} bus {pub_bus:.0?}; consume raw {con_raw:.0?} bus {con_bus:.0?}");
        record(&BenchLine { bench: "kafka_bus", case: "publish", ours: best(&pub_bus), raw: Some(best(&pub_raw)), unit: "msg/s" });
        record(&BenchLine { bench: "kafka_bus", case: "consume + ack", ours: best(&con_bus), raw: Some(best(&con_raw)), unit: "msg/s" });
    });
}
