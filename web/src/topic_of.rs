//! The topic of a stored event, which feed clients filter on with core's topic patterns.
//!
//! By default an event's topic is `<stream category>.<event type without its .vN suffix>`: stream
//! `order-42`, type `OrderPlaced.v1` gives `order.OrderPlaced`, so `?topic=order.>` selects every
//! order event and `?topic=*.OrderPlaced` one type whatever the category. The category is the part
//! of the stream id before its first `-` (as in [`EventFilter`](composable_rust_core::EventFilter)),
//! the whole id when it has none.

use std::fmt;
use std::sync::Arc;

use composable_rust_core::RecordedEvent;

/// Computes each event's topic (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct TopicOf(Arc<dyn Fn(&RecordedEvent) -> String + Send + Sync>);

impl TopicOf {
    /// A user function, e.g. one that puts a tenant in front: `|e| format!("acme.{}", default_topic(e))`.
    /// The feed matches patterns against what it returns as a plain string: keep to dot-separated
    /// segments of ASCII letters, digits, `_` and `-` so that patterns can name them.
    pub fn new(f: impl Fn(&RecordedEvent) -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The topic of `event`.
    pub fn topic(&self, event: &RecordedEvent) -> String {
        (self.0)(event)
    }
}

impl Default for TopicOf {
    /// [`default_topic`].
    fn default() -> Self {
        Self::new(default_topic)
    }
}

impl fmt::Debug for TopicOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TopicOf(..)")
    }
}

/// The stream category of `stream_id`: the part before the first `-`, or the whole id.
pub fn category(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// `<stream category>.<event type without its .vN suffix>`: `order.OrderPlaced` for an
/// `OrderPlaced.v1` in stream `order-42`. An event without a stream (never the case for stored
/// events) gets the category `_`.
pub fn default_topic(event: &RecordedEvent) -> String {
    let stream = event.event.stream_id.as_ref().map_or("_", |s| category(s.as_str()));
    format!("{stream}.{}", event.event.type_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_core::{GlobalPosition, SerializedEvent, StreamId, TopicPattern};

    fn recorded(stream: &str, event_type: &str) -> RecordedEvent {
        let mut event = SerializedEvent::new(event_type, bytes::Bytes::new(), None);
        event.stream_id = Some(StreamId::new(stream).unwrap());
        RecordedEvent { position: GlobalPosition(1), event }
    }

    #[test]
    fn default_topic_is_category_dot_type_name() {
        assert_eq!(default_topic(&recorded("order-42", "OrderPlaced.v1")), "order.OrderPlaced");
        assert_eq!(default_topic(&recorded("order-42-b", "OrderPlaced")), "order.OrderPlaced");
        assert_eq!(default_topic(&recorded("inventory", "StockReserved.v12")), "inventory.StockReserved");
        let topic = default_topic(&recorded("payment-7", "PaymentCaptured.v2"));
        assert!(TopicPattern::new("payment.>").unwrap().matches(&topic));
        assert!(TopicPattern::new("*.PaymentCaptured").unwrap().matches(&topic));
        assert!(!TopicPattern::new("order.>").unwrap().matches(&topic));
    }

    #[test]
    fn a_user_function_replaces_the_default() {
        let of = TopicOf::new(|e| format!("acme.{}", default_topic(e)));
        assert_eq!(of.topic(&recorded("order-1", "OrderPlaced.v1")), "acme.order.OrderPlaced");
        assert_eq!(TopicOf::default().topic(&recorded("order-1", "OrderPlaced.v1")), "order.OrderPlaced");
    }
}
