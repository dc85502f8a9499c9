//! Publish-to-receive throughput and latency: `ZenohEventBus` against raw `session.put` + a
//! subscriber, in the same process and the same run. Prints one table and the ratios.
//!
//! `cargo bench -p composable-rust-zenoh` (`ZENOH_BENCH_EVENTS` sets the throughput count).

#![allow(clippy::cast_precision_loss)] // event counts far below 2^52

use std::time::{Duration, Instant};

use bytes::Bytes;
use composable_rust_core::{EventBus, EventMetadata, SerializedEvent, StreamId, SubscribeOptions, Version};
use composable_rust_testing::bench_results::{BenchLine, record};
use composable_rust_zenoh::{ZenohConfig, ZenohEventBus, keys};
use futures::StreamExt;
use zenoh::Wait;
use zenoh::qos::CongestionControl;

const PAYLOAD: [u8; 64] = [7; 64];
const LATENCY_SAMPLES: usize = 10_000;

fn event(version: u64) -> SerializedEvent {
    let mut e = SerializedEvent::new("OrderPlaced.v1", Bytes::from_static(&PAYLOAD), Some(EventMetadata::now().with_correlation_id("order-1")));
    e.stream_id = Some(StreamId::new("order-1").unwrap());
    e.stream_version = Some(Version(version));
    e
}

async fn bus_throughput(n: usize) -> f64 {
    let bus = ZenohEventBus::connect_with(ZenohConfig::embedded().with_subscriber_capacity(n)).await.unwrap();
    let mut s = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    let events: Vec<SerializedEvent> = (0..n as u64).map(event).collect();
    let consumer = tokio::spawn(async move {
        let mut bytes = 0;
        for _ in 0..n {
            bytes += s.next().await.unwrap().unwrap().event().data.len();
        }
        bytes
    });
    let start = Instant::now();
    for e in &events {
        bus.publish("Order", e).await.unwrap();
    }
    assert_eq!(consumer.await.unwrap(), n * PAYLOAD.len());
    n as f64 / start.elapsed().as_secs_f64()
}

async fn raw_throughput(n: usize) -> f64 {
    let session = zenoh::open(ZenohConfig::embedded().raw_zenoh_config().unwrap()).await.unwrap();
    let sub = session.declare_subscriber("events/Order/**").with(flume::bounded(n)).await.unwrap();
    let topic = composable_rust_core::Topic::new("Order").unwrap();
    let events: Vec<SerializedEvent> = (0..n as u64).map(event).collect();
    let consumer = tokio::spawn(async move {
        let mut bytes = 0;
        for _ in 0..n {
            bytes += sub.recv_async().await.unwrap().payload().len();
        }
        bytes
    });
    let start = Instant::now();
    for e in &events {
        // The same key layout and payload, with no metadata: what a hand-written publisher would do.
        session.put(keys::event_key(&topic, e), e.data.clone()).congestion_control(CongestionControl::Block).wait().unwrap();
    }
    assert_eq!(consumer.await.unwrap(), n * PAYLOAD.len());
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

async fn bus_latency() -> (Duration, Duration) {
    let bus = ZenohEventBus::embedded().await.unwrap();
    let mut s = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for v in 0..LATENCY_SAMPLES as u64 {
        let e = event(v);
        let start = Instant::now();
        bus.publish("Order", &e).await.unwrap();
        let d = s.next().await.unwrap().unwrap();
        samples.push(start.elapsed());
        assert_eq!(d.event().stream_version, Some(Version(v)));
    }
    percentiles(samples)
}

async fn raw_latency() -> (Duration, Duration) {
    let session = zenoh::open(ZenohConfig::embedded().raw_zenoh_config().unwrap()).await.unwrap();
    let sub = session.declare_subscriber("events/Order/**").with(flume::bounded(1024)).await.unwrap();
    let topic = composable_rust_core::Topic::new("Order").unwrap();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for v in 0..LATENCY_SAMPLES as u64 {
        let e = event(v);
        let start = Instant::now();
        session.put(keys::event_key(&topic, &e), e.data.clone()).congestion_control(CongestionControl::Block).wait().unwrap();
        let sample = sub.recv_async().await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(sample.payload().len(), PAYLOAD.len());
    }
    percentiles(samples)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("ZENOH_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    // Profiling one side: `ZENOH_BENCH_ONLY=bus` or `raw` runs just its throughput loop.
    if let Ok(only) = std::env::var("ZENOH_BENCH_ONLY") {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let rate = rt.block_on(async { if only == "raw" { raw_throughput(n).await } else { bus_throughput(n).await } });
        println!("{only}: {rate:.0} events/s");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Warm-up, then alternate so that neither side always runs on a colder machine.
        raw_throughput(n / 10).await;
        bus_throughput(n / 10).await;
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            raw.push(raw_throughput(n).await);
            ours.push(bus_throughput(n).await);
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let (raw_best, ours_best) = (best(&raw), best(&ours));
        let (raw_p50, raw_p99) = raw_latency().await;
        let (bus_p50, bus_p99) = bus_latency().await;
        println!("zenoh embedded, {n} events of {} bytes, 1 subscriber, best of 3", PAYLOAD.len());
        println!("{:<34} {:>14} {:>10} {:>10}", "path", "events/s", "p50", "p99");
        println!("{:<34} {:>14.0} {:>10.1?} {:>10.1?}", "raw session.put + subscriber", raw_best, raw_p50, raw_p99);
        println!("{:<34} {:>14.0} {:>10.1?} {:>10.1?}", "ZenohEventBus publish + subscribe", ours_best, bus_p50, bus_p99);
        println!("throughput ratio (bus / raw): {:.2}   all runs raw {raw:.0?} bus {ours:.0?}", ours_best / raw_best);
        record(&BenchLine { bench: "zenoh_bus", case: "publish + subscribe", ours: ours_best, raw: Some(raw_best), unit: "events/s" });
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        record(&BenchLine { bench: "zenoh_bus_latency", case: "p50", ours: micros(bus_p50), raw: Some(micros(raw_p50)), unit: "us" });
        record(&BenchLine { bench: "zenoh_bus_latency", case: "p99", ours: micros(bus_p99), raw: Some(micros(raw_p99)), unit: "us" });
    });
}
