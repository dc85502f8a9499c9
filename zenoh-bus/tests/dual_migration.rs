//! Migrating from the in-memory bus to Zenoh with the DualEventBus: mirror, switch readers, roll
//! back, and the secondary-failure policies, all by configuration.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{EventBus, EventStream, SerializedEvent, SubscribeOptions};
use composable_rust_runtime::{DualEventBus, DualMode};
use composable_rust_testing::InMemoryEventBus;
use composable_rust_testing::conformance::event_bus::{self, BusCapabilities};
use composable_rust_zenoh::ZenohEventBus;
use futures::StreamExt;

async fn next_number(s: &mut EventStream) -> u8 {
    let d = tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("a delivery").unwrap().unwrap();
    let n = d.event().data[0];
    d.ack().await.unwrap();
    n
}

fn numbered(n: u8) -> SerializedEvent {
    SerializedEvent::new("E.v1", vec![n], None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_to_zenoh_and_back() {
    let memory = Arc::new(InMemoryEventBus::new());
    let zenoh = Arc::new(ZenohEventBus::embedded().await.unwrap());
    let dual = DualEventBus::new(memory.clone(), zenoh.clone(), "dual-read-primary".parse().unwrap());
    let mut zenoh_side = zenoh.subscribe_with(&["events/orders/**"], SubscribeOptions::exclusive()).await.unwrap();
    let mut reader = dual.subscribe_with(&["orders"], SubscribeOptions::exclusive()).await.unwrap();

    dual.publish("orders", &numbered(1)).await.unwrap();
    assert_eq!(next_number(&mut reader).await, 1, "readers stay on the in-memory bus");
    assert_eq!(next_number(&mut zenoh_side).await, 1, "Zenoh receives the mirror");

    dual.set_mode("dual-read-secondary".parse().unwrap());
    let mut reader = dual.subscribe_with(&["orders"], SubscribeOptions::group("readers")).await.unwrap();
    dual.publish("orders", &numbered(2)).await.unwrap();
    assert_eq!(next_number(&mut reader).await, 2, "new readers read from Zenoh");
    assert_eq!(next_number(&mut zenoh_side).await, 2);
    assert_eq!(memory.stats().published(), 2, "the in-memory bus still gets every event");

    dual.set_mode(DualMode::PrimaryOnly);
    dual.publish("orders", &numbered(3)).await.unwrap();
    assert_eq!(memory.stats().published(), 3);
    assert!(tokio::time::timeout(Duration::from_millis(300), zenoh_side.next()).await.is_err(), "after the rollback Zenoh gets nothing");
    assert_eq!(zenoh.stats().published(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_zenoh_secondary_is_counted_or_fails_the_publish_as_configured() {
    let memory = Arc::new(InMemoryEventBus::new());
    let zenoh = Arc::new(ZenohEventBus::embedded().await.unwrap());
    zenoh.raw_session().close().await.unwrap();
    let err = zenoh.publish("orders", &numbered(0)).await.unwrap_err();
    assert!(err.is_retryable(), "a closed session is a retryable publish failure: {err}");

    let logged = DualEventBus::new(memory.clone(), zenoh.clone(), "dual-read-primary".parse().unwrap());
    logged.publish("orders", &numbered(1)).await.expect("secondary failures are only counted in this mode");
    assert_eq!(logged.mirror_failures(), 1);

    let required = DualEventBus::new(memory.clone(), zenoh.clone(), "dual-read-primary:required".parse().unwrap());
    required.publish("orders", &numbered(2)).await.expect_err("a required secondary fails the publish");
    assert_eq!(memory.stats().published(), 2, "the primary got both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_bus_reading_from_zenoh_passes_the_conformance_suite() {
    let caps = BusCapabilities::full();
    event_bus::run_all(
        || async {
            let dual = DualEventBus::new(
                Arc::new(InMemoryEventBus::new()),
                Arc::new(ZenohEventBus::embedded().await.unwrap()),
                "dual-read-secondary".parse().unwrap(),
            );
            Arc::new(dual) as Arc<dyn EventBus>
        },
        caps,
    )
    .await;
}
