//! The NATS bus against a real nats-server: the shared conformance suite, then what only a durable
//! bus promises.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{EventBus, EventBusError, EventStream, InMemoryDeadLetters, SerializedEvent, SubscribeOptions};
use composable_rust_nats::{NatsError, NatsEventBus};
use composable_rust_testing::conformance::event_bus::{self, BusCapabilities};
use futures::StreamExt;
use support::{bus, isolated_config, server};

fn caps() -> BusCapabilities {
    BusCapabilities { settle: Duration::ZERO, receive_timeout: Duration::from_secs(10), ..BusCapabilities::full() }
}

async fn next_delivery(s: &mut EventStream, what: &str) -> composable_rust_core::Delivery {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(Ok(d))) => return d,
            Ok(Some(Err(e @ EventBusError::Unavailable { .. }))) => eprintln!("{what}: transient: {e}"),
            other => panic!("{what}: expected a delivery, got {other:?}"),
        }
    }
}

async fn nothing_within(s: &mut EventStream, wait: Duration) {
    let extra = tokio::time::timeout(wait, s.next()).await;
    assert!(extra.is_err(), "unexpected delivery: {extra:?}");
}

fn numbered(n: u32) -> SerializedEvent {
    SerializedEvent::new("Numbered.v1", n.to_be_bytes().to_vec(), None)
}

fn number(d: &composable_rust_core::Delivery) -> u32 {
    u32::from_be_bytes(d.event().data[..].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_passes_the_conformance_suite() {
    let Some((_server, url)) = server() else { return };
    let config = isolated_config(&url);
    event_bus::run_all(|| async { Arc::new(bus(config.clone()).await) as Arc<dyn EventBus> }, caps()).await;
}

#[tokio::test]
async fn bad_urls_and_absent_servers_are_explained() {
    let err = NatsEventBus::connect("http://not a url").await.unwrap_err();
    assert!(matches!(err, NatsError::InvalidUrl(_)), "{err}");
    let err = NatsEventBus::connect_with(composable_rust_nats::NatsConfig::new("nats://bad host:x")).await.unwrap_err();
    assert!(matches!(err, NatsError::InvalidUrl(_) | NatsError::Unreachable { .. }), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = NatsEventBus::connect(&format!("nats://127.0.0.1:{port}")).await.unwrap_err();
    assert!(matches!(err, NatsError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("is nats-server running"), "{err}");
    let source = std::error::Error::source(&err).expect("the client's connect error is kept as the source");
    assert!(matches!(&err, NatsError::Unreachable { source, .. } if source.downcast_ref::<async_nats::ConnectError>().is_some()), "{source:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_client_error() {
    // Needs a server of its own to kill.
    let Some(mut server) = support::NatsServer::start() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but nats-server is not installed");
        return;
    };
    let mut config = isolated_config(&server.url());
    config = config.with_request_timeout(Duration::from_millis(500));
    let bus = bus(config).await;
    server.kill();

    let err = bus.publish("gone", &numbered(1)).await.expect_err("no server: the publish cannot be acknowledged");
    let EventBusError::PublishFailed { source, retryable, .. } = &err else { panic!("expected PublishFailed, got {err:?}") };
    assert!(*retryable, "a server that went away may come back: {err}");
    assert!(source.downcast_ref::<async_nats::jetstream::context::PublishError>().is_some(), "the async-nats error is lost: {source:?}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");

    let err = bus.subscribe_with(&["gone"], SubscribeOptions::group("g")).await.err().expect("no server: no consumer");
    let EventBusError::SubscribeFailed { source, patterns } = &err else { panic!("expected SubscribeFailed, got {err:?}") };
    assert_eq!(patterns, &["gone".to_owned()]);
    assert!(source.downcast_ref::<async_nats::jetstream::context::GetStreamError>().is_some(), "the async-nats error is lost: {source:?}");
    assert!(err.to_string().contains("cannot look up JetStream stream"), "{err}");
}

#[tokio::test]
async fn a_republished_event_id_is_stored_once() {
    let Some((_server, url)) = server() else { return };
    let bus = bus(isolated_config(&url)).await;
    let mut s = bus.subscribe_with(&["dedup"], SubscribeOptions::exclusive()).await.unwrap();
    let event = numbered(1);
    bus.publish("dedup", &event).await.unwrap();
    bus.publish("dedup", &event).await.unwrap();
    bus.publish("dedup", &numbered(2)).await.unwrap();
    assert_eq!(number(&next_delivery(&mut s, "first").await), 1);
    assert_eq!(number(&next_delivery(&mut s, "second").await), 2, "the retried publish was de-duplicated by Nats-Msg-Id");
}

#[tokio::test]
async fn undecodable_messages_are_reported_terminated_and_consumption_continues() {
    let Some((_server, url)) = server() else { return };
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let config = isolated_config(&url).with_ack_wait(Duration::from_secs(1)).with_dead_letters(dead_letters.clone());
    let bus = bus(config.clone()).await;
    let mut s = bus.subscribe_with(&["mixed"], SubscribeOptions::group("g")).await.unwrap();
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    js.publish(format!("{}.mixed", config.subject_prefix()), "{\"not\":\"an envelope\"}".into()).await.unwrap().await.unwrap();
    bus.publish("mixed", &numbered(7)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Ok(Some(Err(EventBusError::Decode { topic, .. }))) => assert_eq!(topic, format!("{}.mixed", config.subject_prefix())),
        other => panic!("expected a Decode error item, got {other:?}"),
    }
    let d = next_delivery(&mut s, "the next good event").await;
    assert_eq!(number(&d), 7);
    d.ack().await.unwrap();
    nothing_within(&mut s, Duration::from_millis(2500)).await;
    let dead = dead_letters.letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.starts_with("undecodable"), "{dead:?}");
    assert_eq!(dead[0].what, format!("nats message on {}.mixed", config.subject_prefix()));
    assert_eq!(dead_letters.total(), 1);
}

#[tokio::test]
async fn the_dead_letter_record_stays_bounded() {
    let Some((_server, url)) = server() else { return };
    let dead_letters = Arc::new(InMemoryDeadLetters::new(2));
    let config = isolated_config(&url).with_dead_letters(dead_letters.clone());
    let bus = bus(config.clone()).await;
    let mut s = bus.subscribe_with(&["junk"], SubscribeOptions::group("g")).await.unwrap();
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    for i in 0..5 {
        js.publish(format!("{}.junk", config.subject_prefix()), format!("not an envelope {i}").into()).await.unwrap().await.unwrap();
    }
    for i in 0..5 {
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(Err(EventBusError::Decode { .. }))) => {}
            other => panic!("message {i}: expected a Decode error item, got {other:?}"),
        }
    }
    let dead = dead_letters.letters();
    assert_eq!(dead.len(), 2, "at most the sink's capacity is kept: {dead:?}");
    assert_eq!(dead_letters.total(), 5, "every dead letter is counted");
}

#[tokio::test]
async fn a_message_nacked_max_deliver_times_is_dead_lettered_not_redelivered_forever() {
    let Some((_server, url)) = server() else { return };
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let config = isolated_config(&url).with_max_deliver(3).with_dead_letters(dead_letters.clone());
    let bus = bus(config).await;
    let mut s = bus.subscribe_with(&["poison"], SubscribeOptions::group("g")).await.unwrap();
    bus.publish("poison", &numbered(9)).await.unwrap();
    for attempt in 1..=3 {
        let d = next_delivery(&mut s, "poison").await;
        assert_eq!(d.attempt(), attempt);
        d.nack().await.unwrap();
    }
    nothing_within(&mut s, Duration::from_millis(1500)).await;
    let dead = dead_letters.letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].error.contains("not handled after 3 deliveries"), "{dead:?}");
    assert_eq!(dead[0].event.as_ref().map(|e| e.data.to_vec()), Some(9u32.to_be_bytes().to_vec()), "the event, to replay by hand");
}

#[tokio::test]
async fn a_consumer_that_dies_mid_handling_loses_nothing() {
    let Some((_server, url)) = server() else { return };
    let mut config = isolated_config(&url);
    config = config.with_ack_wait(Duration::from_secs(1));
    let bus = bus(config.clone()).await;
    let mut first = bus.subscribe_with(&["work"], SubscribeOptions::group("workers")).await.unwrap();
    for i in 0..10 {
        bus.publish("work", &numbered(i)).await.unwrap();
    }
    let mut acked = HashSet::new();
    for _ in 0..10 {
        let d = next_delivery(&mut first, "first worker").await;
        let n = number(&d);
        if n % 2 == 0 {
            acked.insert(n);
            d.ack().await.unwrap();
        }
        // Odd ones are "in hand" when the worker dies: never acknowledged.
    }
    bus.raw_client().flush().await.unwrap();
    drop(first);

    let restarted = support::bus(config).await;
    let mut second = restarted.subscribe_with(&["work"], SubscribeOptions::group("workers")).await.unwrap();
    let mut again = HashSet::new();
    for _ in 0..5 {
        let d = next_delivery(&mut second, "restarted worker").await;
        again.insert(number(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(again, HashSet::from([1, 3, 5, 7, 9]), "exactly the unacknowledged events come again");
    nothing_within(&mut second, Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_nothing_that_was_acked_on_publish() {
    // Needs a server of its own to kill; NATS_URL cannot be restarted from here.
    let Some(mut server) = support::NatsServer::start() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but nats-server is not installed");
        return;
    };
    let mut config = isolated_config(&server.url());
    config = config.with_storage(composable_rust_nats::Storage::File);
    // Events pulled but not acknowledged before the crash come again after this.
    config = config.with_ack_wait(Duration::from_secs(1));
    let bus = bus(config.clone()).await;
    let mut s = bus.subscribe_with(&["durable"], SubscribeOptions::group("g")).await.unwrap();
    for i in 0..20 {
        bus.publish("durable", &numbered(i)).await.unwrap();
    }
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let d = next_delivery(&mut s, "before restart").await;
        seen.insert(number(&d));
        d.ack().await.unwrap();
    }
    bus.raw_client().flush().await.unwrap();
    drop(s);
    server.restart();

    // Publishes right after the restart may fail while the client reconnects: retry them.
    let bus = support::bus(config).await;
    for i in 20..30 {
        let mut tries = 0;
        while let Err(e) = bus.publish("durable", &numbered(i)).await {
            tries += 1;
            assert!(tries < 50, "publish after restart kept failing: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut s = bus.subscribe_with(&["durable"], SubscribeOptions::group("g")).await.unwrap();
    while seen.len() < 30 {
        let d = next_delivery(&mut s, "after restart").await;
        seen.insert(number(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(seen, (0..30).collect::<HashSet<_>>());
}
