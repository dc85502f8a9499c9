//! The [`EventBus`] trait: publish events to topics, subscribe to patterns under consumer groups, and
//! acknowledge each delivery after handling it.
//!
//! What every bus guarantees (checked by the conformance suite in `composable-rust-testing`):
//! - `publish` returns `Ok` only once the bus accepted the event (for durable buses: the broker
//!   acknowledged it); topics are validated ([`crate::topic`]) the same way everywhere;
//! - a subscription receives events published after `subscribe` returned, on every topic matching one
//!   of its patterns, in publish order per topic for a single publisher;
//! - subscribers sharing a consumer group share the work (each event goes to one member); different
//!   groups each get every event;
//! - in a named consumer group, a [`Delivery`] that is negatively acknowledged is delivered again
//!   (at-least-once); durable buses commit progress only on [`Delivery::ack`], so what was not
//!   acknowledged before a crash is delivered again after it. Exclusive subscribers of in-process
//!   buses are live listeners: `ack` is a no-op and `nack` is refused;
//! - events a subscriber could not receive (a lagging in-memory subscriber) are reported as an
//!   [`EventBusError::Lagged`] item on the stream, never silently skipped.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::Stream;

use crate::event::{CodecError, SerializedEvent};
use crate::topic::{Topic, TopicError};

/// Errors of an event bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventBusError {
    /// A topic or pattern is malformed.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The bus did not accept the event.
    #[error("publish to {topic} failed: {reason}")]
    PublishFailed {
        /// Target topic.
        topic: String,
        /// Why.
        reason: String,
        /// Whether publishing the same event again may succeed.
        retryable: bool,
    },
    /// The subscription could not be set up.
    #[error("subscribe to {patterns:?} failed: {reason}")]
    SubscribeFailed {
        /// The requested patterns.
        patterns: Vec<String>,
        /// Why.
        reason: String,
    },
    /// The subscriber fell behind and `missed` events were dropped for it. Consumers that need every
    /// event must rebuild from the event store (the bus is not the source of truth).
    #[error("subscriber in group {group:?} lagged and missed {missed} events: consume faster or raise the bus capacity")]
    Lagged {
        /// The subscriber's group.
        group: String,
        /// How many events it missed.
        missed: u64,
    },
    /// A message on the topic is not a decodable event (e.g. produced by another client). The bus has
    /// acknowledged it past; it is reported here so it can be dead-lettered.
    #[error("undecodable message on {topic}: {source}")]
    Decode {
        /// Where it arrived.
        topic: String,
        /// Why it could not be decoded.
        source: CodecError,
    },
    /// Acknowledging a delivery failed.
    #[error("acknowledgement failed: {reason}")]
    AckFailed {
        /// Why.
        reason: String,
    },
    /// The bus cannot be reached right now; retrying later may succeed.
    #[error("event bus unavailable: {reason}; check that the broker is running and reachable")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// `nack` on a delivery that cannot be redelivered (a live, exclusive listener).
    #[error(
        "this delivery cannot be redelivered: it came from a listen-only (exclusive) subscription; subscribe with a named consumer group for at-least-once handling"
    )]
    RedeliveryUnsupported,
    /// The bus was shut down.
    #[error("event bus is closed")]
    Closed,
}

impl EventBusError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EventBusError::PublishFailed { retryable, .. } => *retryable,
            EventBusError::Unavailable { .. } | EventBusError::AckFailed { .. } => true,
            _ => false,
        }
    }
}

/// Which subscribers share work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConsumerGroup {
    /// Members of the same named group share the events; each event goes to one member.
    Named(String),
    /// This subscriber alone gets every event (a group of one with a unique name).
    Exclusive,
}

/// Options of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The consumer group.
    pub group: ConsumerGroup,
}

impl SubscribeOptions {
    /// Options for a named group.
    pub fn group(name: impl Into<String>) -> Self {
        Self { group: ConsumerGroup::Named(name.into()) }
    }

    /// Options for an exclusive subscriber that gets every event.
    pub fn exclusive() -> Self {
        Self { group: ConsumerGroup::Exclusive }
    }

    /// The default used by [`EventBus::subscribe`]: a group named deterministically from the sorted
    /// patterns, `composable-rust-{p1}-{p2}...`, so every process subscribing to the same topics
    /// shares one group.
    pub fn for_topics(patterns: &[&str]) -> Self {
        Self::group(default_group_name(patterns))
    }
}

/// `composable-rust-` followed by the sorted, de-duplicated patterns joined by `-`.
pub fn default_group_name(patterns: &[&str]) -> String {
    let mut sorted: Vec<&str> = patterns.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    format!("composable-rust-{}", sorted.join("-"))
}

/// A published event with its topic: what a bus hands to subscribers. Shared (`Arc`) between all
/// subscribers of an in-process bus, so fan-out copies neither the payload nor the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The topic it was published to.
    pub topic: Topic,
    /// The event.
    pub event: SerializedEvent,
}

/// The acknowledgement side of one delivery, implemented by each bus.
pub trait DeliveryAck: Send + 'static {
    /// The consumer handled the delivery: the bus may commit it.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>>;
    /// The consumer could not handle it: deliver it again (where supported).
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>>;
}

/// Acknowledgement shared by all deliveries of one subscription: cheaper than a box per delivery
/// for in-process buses.
pub trait SharedAck: Send + Sync + 'static {
    /// The consumer handled `message`.
    fn ack(&self, message: &Arc<BusMessage>) -> Result<(), EventBusError>;
    /// Deliver `message` again; `attempt` is the attempt that failed.
    fn nack(&self, message: Arc<BusMessage>, attempt: u32) -> Result<(), EventBusError>;
}

enum Acker {
    /// A live listener: nothing to commit, nothing to redeliver from.
    ListenOnly,
    Bus(Box<dyn DeliveryAck>),
    Shared(Arc<dyn SharedAck>),
}

/// One event delivered to a subscriber. Call [`Delivery::ack`] after handling it, or
/// [`Delivery::nack`] to have it delivered again. Dropping it unacknowledged commits nothing: a
/// durable bus delivers it again after a restart or rebalance.
pub struct Delivery {
    message: Arc<BusMessage>,
    attempt: u32,
    acker: Acker,
}

impl Delivery {
    /// A delivery to a live listener (an exclusive subscriber of an in-process bus): `ack` does
    /// nothing and `nack` is refused with [`EventBusError::RedeliveryUnsupported`].
    #[inline]
    pub fn listen_only(message: Arc<BusMessage>) -> Self {
        Self { message, attempt: 1, acker: Acker::ListenOnly }
    }

    /// A delivery acknowledged through `ack`; `attempt` is 1 for a first delivery.
    pub fn with_ack(message: Arc<BusMessage>, attempt: u32, ack: Box<dyn DeliveryAck>) -> Self {
        Self { message, attempt, acker: Acker::Bus(ack) }
    }

    /// A delivery acknowledged through a handle shared by the subscription.
    #[inline]
    pub fn with_shared_ack(message: Arc<BusMessage>, attempt: u32, ack: Arc<dyn SharedAck>) -> Self {
        Self { message, attempt, acker: Acker::Shared(ack) }
    }

    /// The topic it was published to.
    #[inline]
    pub fn topic(&self) -> &Topic {
        &self.message.topic
    }

    /// The event (shared with other subscribers; not copied).
    #[inline]
    pub fn event(&self) -> &SerializedEvent {
        &self.message.event
    }

    /// The shared message (topic and event).
    #[inline]
    pub fn message(&self) -> &Arc<BusMessage> {
        &self.message
    }

    /// 1 for the first delivery, more for redeliveries (as far as the bus knows).
    #[inline]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Acknowledges: the bus may forget (commit) this delivery.
    pub async fn ack(self) -> Result<(), EventBusError> {
        match self.acker {
            Acker::ListenOnly => Ok(()),
            Acker::Bus(a) => a.ack().await,
            Acker::Shared(a) => a.ack(&self.message),
        }
    }

    /// Negative acknowledgement: ask for redelivery.
    pub async fn nack(self) -> Result<(), EventBusError> {
        match self.acker {
            Acker::ListenOnly => Err(EventBusError::RedeliveryUnsupported),
            Acker::Bus(a) => a.nack().await,
            Acker::Shared(a) => a.nack(self.message, self.attempt),
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.message.topic)
            .field("event", &self.message.event)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The stream a subscription yields: deliveries, or errors the consumer should know about
/// (lag, undecodable messages) after which the stream goes on.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Delivery, EventBusError>> + Send>>;

/// A publish/subscribe event bus. Object-safe: use it as `Arc<dyn EventBus>`.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `event` to the concrete `topic`.
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError>;

    /// Subscribes to topics or patterns under the default group ([`SubscribeOptions::for_topics`]).
    async fn subscribe(&self, topics: &[&str]) -> Result<EventStream, EventBusError> {
        self.subscribe_with(topics, SubscribeOptions::for_topics(topics)).await
    }

    /// Subscribes with explicit options.
    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError>;

    /// A short name of the backend (`in-memory`, `redpanda`, ...), for logs.
    fn backend(&self) -> &'static str;
}

/// A shared event bus handle.
pub type SharedEventBus = Arc<dyn EventBus>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_group_is_deterministic_and_order_independent() {
        assert_eq!(default_group_name(&["payment.events", "order.events"]), "composable-rust-order.events-payment.events");
        assert_eq!(default_group_name(&["order.events", "payment.events", "order.events"]), default_group_name(&["payment.events", "order.events"]));
    }

    #[test]
    fn bus_trait_is_object_safe() {
        fn takes(_: Option<Arc<dyn EventBus>>) {}
        takes(None);
    }
}
