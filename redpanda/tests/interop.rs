//! A stock Kafka client (the confluent-kafka Python package on a current librdkafka) reads what this
//! bus publishes, headers included, and this bus consumes what that client produces.

mod support;

use std::process::Command;
use std::time::Duration;

use composable_rust_core::{EventBus, EventMetadata, SerializedEvent, StreamId, SubscribeOptions, Version};
use futures::StreamExt;
use support::{broker, bus, unique_topic};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.py");

fn python_with_confluent_kafka() -> bool {
    if Command::new("python3").args(["-c", "import confluent_kafka"]).output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but python3 cannot import confluent_kafka (pip install confluent-kafka; scripts/test.sh does)"
    );
    eprintln!("skipping: python3 with confluent-kafka not available");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_kafka_client_reads_our_events_with_their_headers() {
    let Some((_broker, brokers)) = broker() else { return };
    if !python_with_confluent_kafka() {
        return;
    }
    let bus = bus(&brokers).await;
    let topic = unique_topic("interop-out");
    bus.create_topic(&topic, 1, 1).await.unwrap();
    let mut metadata = EventMetadata::now().with_correlation_id("order-7").with_causation_id("cmd-9");
    metadata.headers.insert("tenant".into(), "acme".into());
    let mut e = SerializedEvent::new("OrderPlaced.v1", br#"{"total":42}"#.to_vec(), Some(metadata));
    e.stream_id = Some(StreamId::new("order-7").unwrap());
    e.stream_version = Some(Version(1));
    bus.publish(&topic, &e).await.unwrap();

    let out = Command::new("python3").args([SCRIPT, "read", &brokers, &topic]).output().expect("run python3");
    assert!(out.status.success(), "confluent-kafka failed: {}", String::from_utf8_lossy(&out.stderr));
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(read["key"], "order-7", "keyed by the stream id");
    assert_eq!(read["payload"], r#"{"total":42}"#, "the payload is the event's data as it is");
    let h = &read["headers"];
    assert_eq!(h["cr-event-id"], e.event_id.to_string().as_str());
    assert_eq!(h["cr-event-type"], "OrderPlaced.v1");
    assert_eq!(h["cr-stream-id"], "order-7");
    assert_eq!(h["cr-stream-version"], "1");
    assert_eq!(h["cr-correlation-id"], "order-7");
    assert_eq!(h["cr-causation-id"], "cmd-9");
    assert_eq!(h["cr-header-tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_consume_what_a_stock_kafka_client_produces() {
    let Some((_broker, brokers)) = broker() else { return };
    if !python_with_confluent_kafka() {
        return;
    }
    let bus = bus(&brokers).await;
    let topic = unique_topic("interop-in");
    bus.create_topic(&topic, 1, 1).await.unwrap();
    let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(unique_topic("g"))).await.unwrap();
    let out = Command::new("python3").args([SCRIPT, "write", &brokers, &topic]).output().expect("run python3");
    assert!(out.status.success(), "confluent-kafka failed: {}", String::from_utf8_lossy(&out.stderr));
    let d = tokio::time::timeout(Duration::from_secs(30), s.next()).await.expect("a delivery").unwrap().expect("decoded");
    assert_eq!(d.event().event_type, "InvoiceIssued.v1");
    assert_eq!(d.event().event_id.to_string(), "2b3c4d5e-0000-4000-8000-000000000001");
    assert_eq!(d.event().metadata.correlation_id.as_deref(), Some("order-9"));
    assert_eq!(&d.event().data[..], br#"{"amount":12}"#);
    d.ack().await.unwrap();
}
