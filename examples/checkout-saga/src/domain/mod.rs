//! The three aggregates of the checkout, each a reducer whose state lives in its event stream.

pub mod inventory;
pub mod order;
pub mod payment;

use std::sync::Arc;

use composable_rust_core::{Effect, EventBus, EventMetadata, EventStore, ExpectedVersion, SerializedEvent, StreamId, Version};
use serde::Serialize;

/// Topic of order events.
pub const ORDER_TOPIC: &str = "order.events";
/// Topic of inventory events.
pub const INVENTORY_TOPIC: &str = "inventory.events";
/// Topic of payment events.
pub const PAYMENT_TOPIC: &str = "payment.events";

/// What the aggregates need: where to persist and where to publish.
#[derive(Clone)]
pub struct DomainEnv {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// The event bus.
    pub bus: Arc<dyn EventBus>,
}

/// The two effects of every decision: persist the event, then publish it (in this order; the
/// runtime skips the publish if the append fails, and writes the publish intent to the outbox).
pub(crate) fn persist_then_publish<A: Send + 'static, P: Serialize>(
    env: &DomainEnv,
    stream: &StreamId,
    loaded: Version,
    topic: &str,
    event_type: &str,
    payload: &P,
    correlation_id: &str,
) -> [Effect<A>; 2] {
    let metadata = EventMetadata::now().with_correlation_id(correlation_id);
    // Encoding our own plain structs cannot fail; if it ever did, an empty payload would be
    // rejected by the consumer's decoder and dead-lettered, not silently accepted.
    let event = SerializedEvent::from_payload(event_type, payload, Some(metadata.clone())).unwrap_or_else(|e| {
        tracing::error!(error = %e, event_type, "could not encode event");
        SerializedEvent::new(event_type, Vec::new(), Some(metadata))
    });
    [
        Effect::append_events(Arc::clone(&env.store), stream.clone(), ExpectedVersion::from_loaded(loaded), vec![event.clone()]),
        Effect::publish(Arc::clone(&env.bus), topic, event),
    ]
}

/// The stream of `aggregate_type` instance `id`, or `None` for an empty id (the command is ignored).
pub(crate) fn stream_of(aggregate_type: &str, id: &str) -> Option<StreamId> {
    StreamId::for_instance(aggregate_type, id).ok()
}
