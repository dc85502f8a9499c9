//! The embedded Zenoh bus: the shared conformance suite, then the key layout, session feeds,
//! foreign samples and lag reporting.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{Delivery, EventBus, EventBusError, EventStream, SerializedEvent, StreamId, SubscribeOptions, Version};
use composable_rust_testing::conformance::event_bus::{self, BusCapabilities};
use composable_rust_zenoh::keys::SESSION_HEADER;
use composable_rust_zenoh::{ZenohConfig, ZenohEventBus};
use futures::StreamExt;

async fn embedded() -> ZenohEventBus {
    ZenohEventBus::embedded().await.expect("embedded zenoh session")
}

async fn next(s: &mut EventStream, what: &str) -> Result<Delivery, EventBusError> {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.unwrap_or_else(|_| panic!("{what}: nothing within 10 s")).expect("stream ended")
}

async fn nothing_within(s: &mut EventStream, wait: Duration) {
    let extra = tokio::time::timeout(wait, s.next()).await;
    assert!(extra.is_err(), "unexpected delivery: {extra:?}");
}

fn stream_event(stream: &str, version: u64) -> SerializedEvent {
    let mut e = SerializedEvent::new("OrderPlaced.v1", format!("{stream}#{version}").into_bytes(), None);
    e.stream_id = Some(StreamId::new(stream).unwrap());
    e.stream_version = Some(Version(version));
    e
}

fn label(d: &Delivery) -> String {
    String::from_utf8(d.event().data.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_zenoh_bus_passes_the_conformance_suite() {
    event_bus::run_all(|| async { Arc::new(embedded().await) as Arc<dyn EventBus> }, BusCapabilities::full()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_opens_no_network_endpoint() {
    let bus = embedded().await;
    let info = bus.raw_session().info();
    let peers: Vec<_> = info.peers_zid().await.collect();
    assert!(peers.is_empty(), "an embedded session must meet no peer: {peers:?}");
    let config = ZenohConfig::embedded().raw_zenoh_config().unwrap();
    assert_eq!(config.get_json("listen/endpoints").unwrap(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_key_expressions_filter_by_type_instance_or_everything() {
    let bus = embedded().await;
    let mut by_type = bus.subscribe_with(&["events/Order/**"], SubscribeOptions::exclusive()).await.unwrap();
    let mut by_instance = bus.subscribe_with(&["events/Order/order-1/**"], SubscribeOptions::exclusive()).await.unwrap();
    let mut everything = bus.subscribe_with(&["events/**"], SubscribeOptions::exclusive()).await.unwrap();
    let published = [("Order", "order-1", 1), ("Order", "order-2", 1), ("Payment", "payment-1", 1), ("Order", "order-1", 2)];
    for (topic, stream, version) in published {
        bus.publish(topic, &stream_event(stream, version)).await.unwrap();
    }
    let take = async |s: &mut EventStream, n: usize| {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(label(&next(s, "filtered delivery").await.unwrap()));
        }
        nothing_within(s, Duration::from_millis(150)).await;
        got
    };
    assert_eq!(take(&mut by_type, 3).await, ["order-1#1", "order-2#1", "order-1#2"]);
    assert_eq!(take(&mut by_instance, 2).await, ["order-1#1", "order-1#2"]);
    assert_eq!(take(&mut everything, 4).await, ["order-1#1", "order-2#1", "payment-1#1", "order-1#2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ids_with_reserved_characters_round_trip() {
    let bus = embedded().await;
    let mut s = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    let e = stream_event("tenant/a*b $1 #?", 9);
    bus.publish("Order", &e).await.unwrap();
    let d = next(&mut s, "reserved characters").await.unwrap();
    assert_eq!(d.event(), &e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_scoped_feeds_get_only_their_session() {
    let bus = embedded().await;
    let mut mine = bus.subscribe_session("s-1").await.unwrap();
    let mut global = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    let mut tagged = stream_event("order-1", 1);
    tagged.metadata.headers.insert(SESSION_HEADER.into(), "s-1".into());
    let mut other = stream_event("order-2", 1);
    other.metadata.headers.insert(SESSION_HEADER.into(), "s-2".into());
    let untagged = stream_event("order-3", 1);
    for e in [&tagged, &other, &untagged] {
        bus.publish("Order", e).await.unwrap();
    }
    assert_eq!(next(&mut mine, "session feed").await.unwrap().event(), &tagged);
    nothing_within(&mut mine, Duration::from_millis(150)).await;
    let got: Vec<String> =
        [next(&mut global, "g").await, next(&mut global, "g").await, next(&mut global, "g").await].iter().map(|d| label(d.as_ref().unwrap())).collect();
    assert_eq!(got, ["order-1#1", "order-2#1", "order-3#1"], "the global key gets each event once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_samples_are_reported_and_the_stream_goes_on() {
    let dead_letters = Arc::new(composable_rust_core::InMemoryDeadLetters::default());
    let bus = ZenohEventBus::connect_with(ZenohConfig::embedded().with_dead_letters(dead_letters.clone())).await.unwrap();
    let mut s = bus.subscribe_with(&["events/**"], SubscribeOptions::exclusive()).await.unwrap();
    bus.raw_session().put("events/Order/x/1", "not an event").await.unwrap();
    bus.raw_session().put("events/not a topic!/x/1", "junk").await.unwrap();
    let e = stream_event("order-1", 1);
    bus.publish("Order", &e).await.unwrap();
    let err = next(&mut s, "foreign sample").await.unwrap_err();
    assert!(matches!(&err, EventBusError::Decode { topic, .. } if topic == "events/Order/x/1"), "{err:?}");
    assert!(err.to_string().contains("no attachment"), "{err}");
    let err = next(&mut s, "bad topic chunk").await.unwrap_err();
    assert!(matches!(err, EventBusError::Decode { .. }), "{err:?}");
    assert_eq!(next(&mut s, "after foreign samples").await.unwrap().event(), &e);
    assert_eq!(bus.stats().undecodable(), 2);
    let letters = dead_letters.letters();
    assert_eq!(letters.len(), 2, "each foreign sample is a dead letter in the configured sink: {letters:?}");
    assert_eq!(letters[0].what, "zenoh sample on events/Order/x/1");
    assert!(letters[0].error.contains("no attachment"), "{letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_the_zenoh_url() {
    let bus = ZenohEventBus::connect("zenoh:?capacity=8").await.unwrap();
    assert_eq!(bus.config().subscriber_capacity(), 8);
    assert!(matches!(ZenohEventBus::connect("zenoh:peer").await, Err(composable_rust_zenoh::ZenohError::InvalidUrl(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_reports_lag_instead_of_blocking_zenoh() {
    let bus = ZenohEventBus::connect_with(ZenohConfig::embedded().with_subscriber_capacity(4)).await.unwrap();
    let mut s = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    for v in 1..=10 {
        bus.publish("Order", &stream_event("order-1", v)).await.unwrap();
    }
    let lag = next(&mut s, "lag report").await.unwrap_err();
    assert!(matches!(lag, EventBusError::Lagged { missed: 6, .. }), "{lag:?}");
    let kept: Vec<String> = [next(&mut s, "1").await, next(&mut s, "2").await, next(&mut s, "3").await, next(&mut s, "4").await]
        .iter()
        .map(|d| label(d.as_ref().unwrap()))
        .collect();
    assert_eq!(kept, ["order-1#1", "order-1#2", "order-1#3", "order-1#4"]);
    assert_eq!(bus.stats().lagged(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixing_patterns_and_native_expressions_or_bad_expressions_is_refused() {
    let bus = embedded().await;
    let err = bus.subscribe(&["Order", "events/**"]).await.err().unwrap();
    assert!(err.to_string().contains("subscribe to each kind separately"), "{err}");
    let err = bus.subscribe(&["events//x"]).await.err().unwrap();
    assert!(matches!(err, EventBusError::SubscribeFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a valid Zenoh key expression"), "{err}");
    // EventBusError -> what was being done -> zenoh's own error.
    let cause = std::error::Error::source(&err).expect("a source");
    assert!(cause.source().is_some_and(|zenoh| !zenoh.to_string().is_empty()), "zenoh's error is lost: {cause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_into_a_full_subscription_keeps_the_queue_error() {
    let bus = ZenohEventBus::connect_with(ZenohConfig::embedded().with_subscriber_capacity(1)).await.unwrap();
    let mut s = bus.subscribe_with(&["Order"], SubscribeOptions::group("g")).await.unwrap();
    bus.publish("Order", &stream_event("order-1", 1)).await.unwrap();
    let d = next(&mut s, "first").await.unwrap();
    bus.publish("Order", &stream_event("order-1", 2)).await.unwrap();
    let err = d.nack().await.expect_err("no room to queue the redelivery");
    let EventBusError::AckFailed { source } = &err else { panic!("expected AckFailed, got {err:?}") };
    assert!(matches!(source.downcast_ref::<flume::TrySendError<()>>(), Some(flume::TrySendError::Full(()))), "{source:?}");
    assert!(err.to_string().contains("raise subscriber_capacity"), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_in_one_process_share_and_leave_cleanly() {
    let bus = embedded().await;
    let m1 = bus.subscribe_with(&["Order"], SubscribeOptions::group("workers")).await.unwrap();
    drop(m1);
    // The last member left: its Zenoh subscriber is gone, so nothing queues up for nobody.
    for v in 0..3 {
        bus.publish("Order", &stream_event("order-1", v)).await.unwrap();
    }
    let mut m2 = bus.subscribe_with(&["Order"], SubscribeOptions::group("workers")).await.unwrap();
    bus.publish("Order", &stream_event("order-1", 99)).await.unwrap();
    let d = next(&mut m2, "new member").await.unwrap();
    assert_eq!(label(&d), "order-1#99", "a group with no member keeps nothing on this bus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_a_late_subscriber_gets_only_what_comes_after() {
    let bus = embedded().await;
    bus.publish("Order", &stream_event("order-1", 1)).await.unwrap();
    let mut late = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    bus.publish("Order", &stream_event("order-1", 2)).await.unwrap();
    assert_eq!(label(&next(&mut late, "live").await.unwrap()), "order-1#2");
    nothing_within(&mut late, Duration::from_millis(150)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaying_subscriber_gets_the_retained_history_then_live_events_each_once() {
    let bus = ZenohEventBus::connect_with(ZenohConfig::embedded().with_history(3).with_replay_history(true)).await.unwrap();
    for v in 1..=5 {
        bus.publish("Order", &stream_event("order-1", v)).await.unwrap();
    }
    bus.publish("Payment", &stream_event("payment-1", 1)).await.unwrap();
    let mut late = bus.subscribe_with(&["Order"], SubscribeOptions::exclusive()).await.unwrap();
    bus.publish("Order", &stream_event("order-1", 6)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(label(&next(&mut late, "replay and live").await.unwrap()));
    }
    nothing_within(&mut late, Duration::from_millis(200)).await;
    got.sort();
    // The ring keeps the last 3 events of any topic (order-1#4, order-1#5, payment-1#1): the
    // subscription's filter keeps the Order ones, and #6 arrives live.
    assert_eq!(got, ["order-1#4", "order-1#5", "order-1#6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_joins_late_replays_another_peers_history() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let publisher = ZenohEventBus::connect_with(ZenohConfig::peer().with_listen(&endpoint).with_history(100)).await.unwrap();
    for v in 1..=4 {
        publisher.publish("Order", &stream_event("order-9", v)).await.unwrap();
    }
    let late = ZenohEventBus::connect_with(ZenohConfig::peer().with_connect(&endpoint).with_replay_history(true)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while late.raw_session().info().peers_zid().await.next().is_none() {
        assert!(std::time::Instant::now() < deadline, "the peers never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = late.subscribe_with(&["events/Order/order-9/**"], SubscribeOptions::exclusive()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(label(&next(&mut s, "replayed across peers").await.unwrap()));
    }
    got.sort();
    assert_eq!(got, ["order-9#1", "order-9#2", "order-9#3", "order-9#4"]);
}
