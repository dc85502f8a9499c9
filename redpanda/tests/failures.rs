//! Failure injection with librdkafka's MockCluster (broker down, request errors, coordinator moves),
//! bad configuration, and messages from other producers.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use composable_rust_core::{EventBus, EventBusError, EventStream, InMemoryDeadLetters, SerializedEvent, StreamId, SubscribeOptions, Version};
use composable_rust_redpanda::{RedpandaConfig, RedpandaError, RedpandaEventBus};
use futures::StreamExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::FutureRecord;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::util::Timeout;
use support::{broker, unique_topic};

fn event(stream: &str, version: u64) -> SerializedEvent {
    let mut e = SerializedEvent::new("Numbered.v1", format!("{stream}#{version}").into_bytes(), None);
    e.stream_id = Some(StreamId::new(stream).unwrap());
    e.stream_version = Some(Version(version));
    e
}

fn label(d: &composable_rust_core::Delivery) -> String {
    String::from_utf8(d.event().data.to_vec()).unwrap()
}

/// A bus on a mock cluster: topics are made with the mock API (it has no CreateTopics).
async fn mock_bus(mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>) -> RedpandaEventBus {
    let mut config = support::config(&mock.bootstrap_servers());
    config = config.with_auto_create_topics(None);
    config = config.with_delivery_timeout(Duration::from_secs(3));
    RedpandaEventBus::connect_with(config).await.expect("connect to the mock cluster")
}

async fn collect(s: &mut EventStream, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(d))) => {
                got.push(label(&d));
                d.ack().await.unwrap();
            }
            Ok(Some(Err(EventBusError::Unavailable { .. }))) => {}
            Ok(other) => panic!("unexpected stream item {other:?}"),
            Err(elapsed) => panic!("only {} of {n} deliveries within {within:?} ({elapsed}): {got:?}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_while_the_broker_is_down_fails_with_a_retryable_error_never_silently() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("orders", 1, 1).unwrap();
    let bus = mock_bus(&mock).await;
    bus.publish("orders", &event("o-1", 1)).await.expect("publish while the broker is up");
    mock.broker_down(1).unwrap();
    let started = Instant::now();
    let err = bus.publish("orders", &event("o-1", 2)).await.expect_err("a publish to a down broker must not report success");
    assert!(matches!(err, EventBusError::PublishFailed { retryable: true, .. }), "{err:?}");
    assert!(err.cause().and_then(|c| c.downcast_ref::<rdkafka::error::KafkaError>()).is_some(), "librdkafka's error is kept: {err:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "librdkafka retried until the delivery timeout, {:?}", started.elapsed());
    mock.broker_up(1).unwrap();
    // What a caller does with a retryable error: try again (librdkafka reconnects with a backoff).
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = bus.publish("orders", &event("o-1", 2)).await {
        assert!(e.is_retryable() && Instant::now() < deadline, "the broker is back, the retry must succeed: {e}");
    }
    let mut s = bus.subscribe_with(&["orders"], SubscribeOptions::group("readers")).await.unwrap();
    assert_eq!(collect(&mut s, 2, Duration::from_secs(30)).await, ["o-1#1", "o-1#2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_produce_errors_are_retried_without_duplicates() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("payments", 1, 1).unwrap();
    let bus = mock_bus(&mock).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    for v in 1..=3 {
        bus.publish("payments", &event("p-1", v)).await.expect("retried by the idempotent producer");
    }
    let mut s = bus.subscribe_with(&["payments"], SubscribeOptions::group("auditors")).await.unwrap();
    assert_eq!(collect(&mut s, 3, Duration::from_secs(30)).await, ["p-1#1", "p-1#2", "p-1#3"]);
    let extra = tokio::time::timeout(Duration::from_secs(2), s.next()).await;
    assert!(extra.is_err(), "a retried produce was written twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_goes_on_when_the_group_coordinator_moves() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("stock", 3, 1).unwrap();
    let bus = mock_bus(&mock).await;
    mock.coordinator(MockCoordinator::Group("keepers".into()), 1).unwrap();
    let mut s = bus.subscribe_with(&["stock"], SubscribeOptions::group("keepers")).await.unwrap();
    for v in 1..=5 {
        bus.publish("stock", &event("sku-1", v)).await.unwrap();
    }
    let mut got = collect(&mut s, 5, Duration::from_secs(30)).await;
    mock.coordinator(MockCoordinator::Group("keepers".into()), 3).unwrap();
    for v in 6..=10 {
        bus.publish("stock", &event("sku-1", v)).await.unwrap();
    }
    got.extend(collect(&mut s, 5, Duration::from_secs(30)).await);
    let want: Vec<String> = (1..=10).map(|v| format!("sku-1#{v}")).collect();
    assert_eq!(got, want, "every event once and in order across the coordinator move");
}

#[tokio::test]
async fn bad_broker_lists_and_absent_brokers_are_explained() {
    for bad in ["", "kafka://localhost:9092", "localhost"] {
        let err = RedpandaEventBus::connect_with(RedpandaConfig::new(bad)).await.unwrap_err();
        assert!(matches!(err, RedpandaError::InvalidBrokers { .. }), "{bad:?}: {err}");
    }
    for bad in ["", "localhost:9092", "kafka://localhost", "kafka://h:1?linger.ms"] {
        let err = RedpandaEventBus::connect(bad).await.unwrap_err();
        assert!(matches!(err, RedpandaError::InvalidUrl(_)), "{bad:?}: {err}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = RedpandaConfig::new(format!("127.0.0.1:{port}"));
    config = config.with_request_timeout(Duration::from_secs(2));
    let err = RedpandaEventBus::connect_with(config).await.unwrap_err();
    assert!(matches!(err, RedpandaError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("check that Redpanda/Kafka is running"), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "librdkafka's error is kept: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_other_producers_are_dead_lettered_or_given_a_stable_id() {
    let Some((_broker, brokers)) = broker() else { return };
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let bus = RedpandaEventBus::connect_with(support::config(&brokers).with_dead_letters(dead_letters.clone())).await.unwrap();
    let topic = unique_topic("foreign");
    bus.create_topic(&topic, 1, 1).await.unwrap();
    let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(unique_topic("g"))).await.unwrap();
    let raw = bus.raw_producer();
    raw.send(FutureRecord::<str, _>::to(&topic).payload("no headers at all"), Timeout::Never).await.unwrap();
    let typed = OwnedHeaders::new().insert(Header { key: "cr-event-type", value: Some("Foreign.v1") });
    raw.send(FutureRecord::<str, _>::to(&topic).payload("typed").headers(typed), Timeout::Never).await.unwrap();
    bus.publish(&topic, &event("o-9", 1)).await.unwrap();

    let err = tokio::time::timeout(Duration::from_secs(30), s.next()).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(&err, EventBusError::Decode { topic: t, .. } if *t == topic), "{err:?}");
    assert!(err.to_string().contains("no cr-event-type header"), "{err}");
    let foreign = tokio::time::timeout(Duration::from_secs(10), s.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((foreign.event().event_type.as_str(), &foreign.event().data[..]), ("Foreign.v1", &b"typed"[..]));
    let foreign_id = foreign.event().event_id;
    foreign.ack().await.unwrap();
    let ours = tokio::time::timeout(Duration::from_secs(10), s.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(label(&ours), "o-9#1");
    ours.ack().await.unwrap();

    let letters = dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].what, format!("kafka message {topic}/0@0"));
    assert!(letters[0].error.contains("no cr-event-type header"), "{letters:?}");

    // Another group reads the same foreign message: its derived id is the same.
    let mut again = bus.subscribe_with(&[&topic], SubscribeOptions::group(unique_topic("g2"))).await.unwrap();
    let mut ids = BTreeSet::new();
    while ids.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(30), again.next()).await.unwrap().unwrap() {
            Ok(d) => {
                ids.insert(d.event().event_id);
                d.ack().await.unwrap();
            }
            Err(EventBusError::Decode { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ids.contains(&foreign_id), "a foreign message keeps its derived id across groups");
}
