//! DualEventBus: migrate between two buses and roll back by changing the mode only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::{EventBus, EventBusError, EventStream, SerializedEvent, SubscribeOptions};
use composable_rust_runtime::{DualEventBus, DualMode, SecondaryPolicy, Side};
use composable_rust_testing::InMemoryEventBus;
use composable_rust_testing::conformance::event_bus::{self, BusCapabilities};
use futures::StreamExt;

fn event(n: u8) -> SerializedEvent {
    SerializedEvent::new("E.v1", vec![n], None)
}

async fn next_number(s: &mut EventStream) -> u8 {
    let d = tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("a delivery").unwrap().unwrap();
    d.event().data[0]
}

async fn nothing(s: &mut EventStream) {
    assert!(tokio::time::timeout(Duration::from_millis(100), s.next()).await.is_err(), "unexpected delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_bus_is_a_conformant_bus_in_every_mode() {
    for mode in ["primary", "dual-read-primary", "dual-read-secondary:required", "secondary"] {
        let mode: DualMode = mode.parse().unwrap();
        event_bus::run_all(
            || async move { Arc::new(DualEventBus::new(Arc::new(InMemoryEventBus::new()), Arc::new(InMemoryEventBus::new()), mode)) as Arc<dyn EventBus> },
            BusCapabilities::full(),
        )
        .await;
    }
}

#[tokio::test]
async fn migrate_forward_then_roll_back_by_mode_only() {
    let old = Arc::new(InMemoryEventBus::new());
    let new = Arc::new(InMemoryEventBus::new());
    let bus = DualEventBus::new(old.clone(), new.clone(), DualMode::PrimaryOnly);
    let mut on_old = old.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
    let mut on_new = new.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();

    bus.publish("t", &event(1)).await.unwrap();
    assert_eq!(next_number(&mut on_old).await, 1);
    nothing(&mut on_new).await;

    bus.set_mode("dual-read-primary".parse().unwrap());
    let mut reader = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
    bus.publish("t", &event(2)).await.unwrap();
    assert_eq!((next_number(&mut on_old).await, next_number(&mut on_new).await, next_number(&mut reader).await), (2, 2, 2));

    bus.set_mode(DualMode::SecondaryOnly);
    bus.publish("t", &event(3)).await.unwrap();
    assert_eq!(next_number(&mut on_new).await, 3);
    nothing(&mut on_old).await;

    // Roll back: the old bus gets everything again.
    bus.set_mode(DualMode::PrimaryOnly);
    bus.publish("t", &event(4)).await.unwrap();
    assert_eq!(next_number(&mut on_old).await, 4);
    nothing(&mut on_new).await;
}

struct DownBus(AtomicBool);

#[async_trait]
impl EventBus for DownBus {
    async fn publish(&self, topic: &str, _: &SerializedEvent) -> Result<(), EventBusError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(EventBusError::unavailable(BusCause::msg(format!("{topic}: down (test)"))));
        }
        Ok(())
    }
    async fn subscribe_with(&self, topics: &[&str], _: SubscribeOptions) -> Result<EventStream, EventBusError> {
        Err(EventBusError::subscribe_failed(topics, BusCause::msg("down (test)")))
    }
    fn backend(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn mirror_failures_are_counted_or_fatal_as_configured() {
    let healthy = Arc::new(InMemoryEventBus::new());
    let down = Arc::new(DownBus(AtomicBool::new(true)));
    let bus = DualEventBus::new(healthy.clone(), down.clone(), DualMode::Dual { read_from: Side::Primary, mirror: SecondaryPolicy::BestEffort });
    bus.publish("t", &event(1)).await.expect("best effort: the mirror's failure is not the publish's");
    assert_eq!(bus.mirror_failures(), 1);
    assert_eq!(healthy.stats().published(), 1);

    bus.set_mode(DualMode::Dual { read_from: Side::Primary, mirror: SecondaryPolicy::Required });
    let err = bus.publish("t", &event(2)).await.expect_err("required mirror");
    assert!(matches!(err, EventBusError::Unavailable { .. }), "{err}");

    bus.set_mode(DualMode::Dual { read_from: Side::Secondary, mirror: SecondaryPolicy::BestEffort });
    let err = bus.publish("t", &event(3)).await.expect_err("the read side must succeed");
    assert!(matches!(err, EventBusError::Unavailable { .. }), "{err}");
    assert_eq!(healthy.stats().published(), 2, "a failed read-side publish is not mirrored");
}
