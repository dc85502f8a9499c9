//! The Redpanda/Kafka bus against a real Kafka-protocol broker: the shared conformance suite.

mod support;

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::EventBus;
use composable_rust_testing::conformance::event_bus::{self, BusCapabilities};
use support::{broker, bus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bus_passes_the_conformance_suite() {
    let Some((_broker, brokers)) = broker() else { return };
    // Group members join one after the other: settle lets the group's rebalance finish before
    // events flow, as a real deployment's start-up would.
    let caps = BusCapabilities { settle: Duration::from_secs(4), receive_timeout: Duration::from_secs(20), ..BusCapabilities::full() };
    event_bus::run_all(|| async { Arc::new(bus(&brokers).await) as Arc<dyn EventBus> }, caps).await;
}
