//! The in-memory backends pass the same conformance suites as every other backend.

use std::sync::Arc;

use composable_rust_core::{EventBus, EventBusError, EventStore, SerializedEvent, SubscribeOptions};
use composable_rust_testing::conformance::{event_bus, event_store};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_event_store_passes_the_conformance_suite() {
    event_store::run_all(|| async { Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_event_bus_passes_the_conformance_suite() {
    event_bus::run_all(|| async { Arc::new(InMemoryEventBus::new()) as Arc<dyn EventBus> }, event_bus::BusCapabilities::full()).await;
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_how_many_events_it_missed() {
    let bus = InMemoryEventBus::with_capacity(4);
    let mut slow = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
    for i in 0..10u8 {
        bus.publish("t", &SerializedEvent::new("E.v1", vec![i], None)).await.unwrap();
    }
    match slow.next().await {
        Some(Err(EventBusError::Lagged { missed, .. })) => assert_eq!(missed, 6),
        other => panic!("expected a Lagged error first, got {other:?}"),
    }
    let next = slow.next().await.unwrap().unwrap();
    assert_eq!(next.event().data[..], [6], "after the lag report, delivery resumes at the oldest event kept");
    assert_eq!(bus.stats().lagged(), 6, "lag is counted in the bus metrics");
}

#[tokio::test]
async fn fan_out_shares_one_payload_buffer() {
    let bus = InMemoryEventBus::new();
    let mut a = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
    let mut b = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
    bus.publish("t", &SerializedEvent::new("E.v1", vec![0u8; 1024], None)).await.unwrap();
    let (da, db) = (a.next().await.unwrap().unwrap(), b.next().await.unwrap().unwrap());
    assert_eq!(da.event().data.as_ptr(), db.event().data.as_ptr(), "subscribers share the payload, it is not copied per subscriber");
}

#[tokio::test]
async fn members_of_a_group_must_subscribe_to_the_same_topics() {
    let bus = InMemoryEventBus::new();
    let _first = bus.subscribe_with(&["a"], SubscribeOptions::group("g")).await.unwrap();
    let err = bus.subscribe_with(&["b"], SubscribeOptions::group("g")).await.err().expect("mismatched group member");
    assert!(matches!(err, EventBusError::SubscribeFailed { .. }), "{err:?}");
}

#[tokio::test]
async fn ten_thousand_subscribers_each_receive_every_event() {
    let bus = InMemoryEventBus::new();
    let mut streams = Vec::new();
    for _ in 0..10_000 {
        streams.push(bus.subscribe_with(&["fan.>"], SubscribeOptions::exclusive()).await.unwrap());
    }
    for i in 0..3u8 {
        bus.publish("fan.out", &SerializedEvent::new("E.v1", vec![i], None)).await.unwrap();
    }
    for s in &mut streams {
        for i in 0..3u8 {
            let d = s.next().await.unwrap().unwrap();
            assert_eq!(d.event().data[..], [i]);
        }
    }
    assert_eq!(bus.stats().lagged(), 0);
}

#[tokio::test]
async fn an_exclusive_listener_cannot_nack() {
    let bus = InMemoryEventBus::new();
    let mut listener = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
    bus.publish("t", &SerializedEvent::new("E.v1", vec![1], None)).await.unwrap();
    let d = listener.next().await.unwrap().unwrap();
    assert_eq!(d.nack().await, Err(EventBusError::RedeliveryUnsupported), "a listen-only delivery says it cannot be redelivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_event_store_passes_the_deadline_conformance_suite() {
    composable_rust_testing::conformance::deadlines::run_all(|| async { Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_passes_the_read_side_conformance_suite() {
    composable_rust_testing::conformance::read_model::run_all(|| async {
        let store = Arc::new(InMemoryEventStore::new());
        (store.clone() as Arc<dyn EventStore>, store as Arc<dyn composable_rust_core::ReadModelStore>)
    })
    .await;
}
