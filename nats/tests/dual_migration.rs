//! Migrating from the in-memory bus to NATS with the DualEventBus, and rolling back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{EventBus, EventStream, SerializedEvent, SubscribeOptions};
use composable_rust_runtime::{DualEventBus, DualMode};
use composable_rust_testing::InMemoryEventBus;
use futures::StreamExt;
use support::{bus, isolated_config, server};

async fn next_number(s: &mut EventStream) -> u8 {
    let d = tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("a delivery").unwrap().unwrap();
    let n = d.event().data[0];
    d.ack().await.unwrap();
    n
}

#[tokio::test]
async fn in_memory_to_nats_and_back() {
    let Some((_server, url)) = server() else { return };
    let memory = Arc::new(InMemoryEventBus::new());
    let nats = Arc::new(bus(isolated_config(&url)).await);
    let dual = DualEventBus::new(memory.clone(), nats.clone(), "dual-read-primary:required".parse().unwrap());
    let mut nats_side = nats.subscribe_with(&["orders"], SubscribeOptions::group("migration")).await.unwrap();
    let mut reader = dual.subscribe_with(&["orders"], SubscribeOptions::exclusive()).await.unwrap();

    dual.publish("orders", &SerializedEvent::new("E.v1", vec![1], None)).await.unwrap();
    assert_eq!(next_number(&mut reader).await, 1, "readers stay on the in-memory bus");
    assert_eq!(next_number(&mut nats_side).await, 1, "NATS receives the mirror");

    dual.set_mode("dual-read-secondary".parse().unwrap());
    let mut reader = dual.subscribe_with(&["orders"], SubscribeOptions::group("readers")).await.unwrap();
    dual.publish("orders", &SerializedEvent::new("E.v1", vec![2], None)).await.unwrap();
    assert_eq!(next_number(&mut reader).await, 2, "new readers read from NATS");
    assert_eq!(next_number(&mut nats_side).await, 2);
    assert_eq!(memory.stats().published(), 2, "the in-memory bus still gets the mirror");

    dual.set_mode(DualMode::PrimaryOnly);
    dual.publish("orders", &SerializedEvent::new("E.v1", vec![3], None)).await.unwrap();
    assert_eq!(memory.stats().published(), 3);
    assert!(tokio::time::timeout(Duration::from_millis(300), nats_side.next()).await.is_err(), "after the rollback NATS gets nothing");
}
