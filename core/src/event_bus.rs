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

use uuid::Uuid;

use crate::event::{CodecError, SerializedEvent};
use crate::topic::{Topic, TopicError};

/// The underlying error of a bus failure (see [`Cause`](crate::cause::Cause)).
pub use crate::cause::Cause as BusCause;

/// Errors of an event bus. New variants may be added: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventBusError {
    /// A topic or pattern is malformed.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The bus did not accept the event.
    #[error("publish to {topic} failed: {source}{}", if *retryable { "; publishing again may succeed" } else { "; publishing the same event again will fail the same way" })]
    PublishFailed {
        /// Target topic.
        topic: String,
        /// The client's error.
        #[source]
        source: BusCause,
        /// Whether publishing the same event again may succeed.
        retryable: bool,
    },
    /// The subscription could not be set up.
    #[error("subscribe to {patterns:?} failed: {source}")]
    SubscribeFailed {
        /// The requested patterns.
        patterns: Vec<String>,
        /// The client's error.
        #[source]
        source: BusCause,
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
    /// Acknowledging a delivery failed; the delivery may come again (at-least-once).
    #[error("acknowledgement failed: {source}; the delivery may be delivered again")]
    AckFailed {
        /// The client's error.
        #[source]
        source: BusCause,
    },
    /// The bus cannot be reached right now; retrying later may succeed.
    #[error("event bus unavailable: {source}; check that the broker is running and reachable")]
    Unavailable {
        /// The client's error.
        #[source]
        source: BusCause,
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
    /// [`EventBusError::PublishFailed`] caused by `source` (a client error, or [`BusCause::msg`]).
    pub fn publish_failed(topic: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static, retryable: bool) -> Self {
        EventBusError::PublishFailed { topic: topic.into(), source: BusCause::new(source), retryable }
    }

    /// [`EventBusError::SubscribeFailed`] caused by `source` (a client error, or [`BusCause::msg`]).
    pub fn subscribe_failed(patterns: impl IntoIterator<Item = impl AsRef<str>>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EventBusError::SubscribeFailed { patterns: patterns.into_iter().map(|p| p.as_ref().to_owned()).collect(), source: BusCause::new(source) }
    }

    /// [`EventBusError::AckFailed`] caused by `source` (a client error, or [`BusCause::msg`]).
    pub fn ack_failed(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EventBusError::AckFailed { source: BusCause::new(source) }
    }

    /// [`EventBusError::Unavailable`] caused by `source` (a client error, or [`BusCause::msg`]).
    pub fn unavailable(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EventBusError::Unavailable { source: BusCause::new(source) }
    }

    /// The underlying client error, for the variants that have one.
    pub fn cause(&self) -> Option<&BusCause> {
        match self {
            EventBusError::PublishFailed { source, .. }
            | EventBusError::SubscribeFailed { source, .. }
            | EventBusError::AckFailed { source }
            | EventBusError::Unavailable { source } => Some(source),
            _ => None,
        }
    }

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

    /// The default used by [`EventBus::subscribe`]: the group [`default_group_name`] names after the
    /// patterns, so every process subscribing to the same set of topics shares one group.
    pub fn for_topics(patterns: &[&str]) -> Self {
        Self::group(default_group_name(patterns))
    }
}

/// Namespace of the hash in default group names. Changing it renames every default group (and so
/// makes durable buses start them afresh): never change it.
const GROUP_NAME_NAMESPACE: Uuid = Uuid::from_u128(0x3d6c_52a1_8f0e_4b7a_9c21_5e44_d0b3_7f18);

/// Longest readable part of a default group name, so that the whole name stays within 64 characters.
const GROUP_NAME_READABLE_LEN: usize = 31;

/// The default consumer group of a subscription to `patterns`, e.g.
/// `composable-rust-order.events-payment.events-51ac348092275f3d`: a readable part (the sorted,
/// de-duplicated patterns joined by `-`, wildcards and characters outside `[A-Za-z0-9._-]` shown as
/// `_`, cut at 31 characters) and the first 16 hex digits (60 bits once the version digit is
/// discounted) of a UUID v5 (SHA-1) of the set itself, each pattern length-prefixed. The readable
/// part may be ambiguous (`["a-b", "c"]` and `["a", "b-c"]` read alike); the hash is not, so two
/// different sets do not share a group short of a SHA-1 collision in 60 bits. Order and repetition
/// of the patterns do not matter.
///
/// The name is the same in every process and with every Rust version (no `std` hasher), at most 64
/// characters of `[A-Za-z0-9._-]`: a valid Kafka group id, and a NATS durable name once the NATS bus
/// replaces its dots.
///
/// Earlier versions named the group `composable-rust-{p1}-{p2}...` with no hash. A deployment whose
/// durable groups have those names keeps their progress by subscribing with
/// `SubscribeOptions::group(old name)`; otherwise the new group starts afresh.
pub fn default_group_name(patterns: &[&str]) -> String {
    let mut sorted: Vec<&str> = patterns.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut encoded = Vec::with_capacity(sorted.iter().map(|p| p.len() + 8).sum());
    for p in &sorted {
        encoded.extend_from_slice(&u64::try_from(p.len()).unwrap_or(u64::MAX).to_be_bytes());
        encoded.extend_from_slice(p.as_bytes());
    }
    let digest = Uuid::new_v5(&GROUP_NAME_NAMESPACE, &encoded).as_u128() >> 64;
    let readable: String = sorted
        .join("-")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(GROUP_NAME_READABLE_LEN)
        .collect();
    let readable = readable.trim_end_matches(['.', '_', '-']);
    if readable.is_empty() { format!("composable-rust-{digest:016x}") } else { format!("composable-rust-{readable}-{digest:016x}") }
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
        // Pinned: a default group must keep its name across processes, releases and Rust versions, or
        // durable buses would start it afresh (re-reading or skipping events).
        assert_eq!(default_group_name(&["payment.events", "order.events"]), "composable-rust-order.events-payment.events-51ac348092275f3d");
        assert_eq!(default_group_name(&["order.events", "payment.events", "order.events"]), default_group_name(&["payment.events", "order.events"]));
    }

    #[test]
    fn distinct_pattern_sets_get_distinct_default_groups() {
        // Joined with `-`, both sets used to read `a-b-c`: two unrelated subscriptions then shared one
        // group and each received only part of its events.
        assert_ne!(default_group_name(&["a-b", "c"]), default_group_name(&["a", "b-c"]));
        assert_ne!(default_group_name(&["a.b", "c"]), default_group_name(&["a", "b.c"]));
        // Same readable part (wildcards are shown as `_`, long names are cut), different sets.
        assert_ne!(default_group_name(&["a.*"]), default_group_name(&["a._"]));
        assert_ne!(default_group_name(&["a.>"]), default_group_name(&["a.*"]));
        let long = "x".repeat(40);
        assert_ne!(default_group_name(&[&format!("{long}.a")]), default_group_name(&[&format!("{long}.b")]));
    }

    #[test]
    fn default_group_names_are_valid_on_every_bus() {
        let long = format!("{}.>", "segment".repeat(30));
        for patterns in [&["order.events"][..], &["shop.*.events", "shop.audit.>"], &[&long], &[">"], &["*"]] {
            let name = default_group_name(patterns);
            // Kafka group ids and (dots aside, which the NATS bus replaces) NATS durable names.
            assert!(name.len() <= 64, "{name} is {} characters", name.len());
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')), "{name}");
            assert!(!name.contains("--") && !name.ends_with('-'), "{name}");
        }
        assert_eq!(default_group_name(&[">"]).len(), "composable-rust-".len() + 16, "a pattern with nothing readable gets the hash alone");
    }

    proptest::proptest! {
        #[test]
        fn default_group_names_differ_exactly_when_the_sets_do(
            a in proptest::collection::vec("[ab.*>-]{1,4}", 1..4),
            b in proptest::collection::vec("[ab.*>-]{1,4}", 1..4),
        ) {
            let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<String>>();
            let name = |v: &[String]| default_group_name(&v.iter().map(String::as_str).collect::<Vec<_>>());
            proptest::prop_assert_eq!(name(&a) == name(&b), set(&a) == set(&b), "{:?} vs {:?}", a, b);
        }
    }

    #[test]
    fn bus_errors_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = EventBusError::unavailable(io);
        let source = std::error::Error::source(&err).expect("the client error is the source");
        assert_eq!(source.to_string(), "connection refused");
        assert_eq!(err.cause().and_then(BusCause::downcast_ref::<std::io::Error>).map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused));
        assert!(err.to_string().contains("connection refused") && err.to_string().contains("check that the broker is running"), "{err}");
        assert!(err.is_retryable());

        // With context: the message says what was being done; the client error is still in the chain.
        let err = EventBusError::subscribe_failed(["a.b"], BusCause::context("creating consumer", std::io::Error::other("boom")));
        assert_eq!(err.to_string(), "subscribe to [\"a.b\"] failed: creating consumer: boom");
        assert!(err.cause().and_then(BusCause::downcast_ref::<std::io::Error>).is_some());

        // A plain message, and a cause passed on is not wrapped twice.
        let cause = BusCause::msg("broker down (test)");
        let err = EventBusError::publish_failed("t", cause.clone(), false);
        assert_eq!(err.cause(), Some(&cause));
        assert!(std::error::Error::source(&cause).is_none());
        assert!(!err.is_retryable());
        assert!(err.to_string().starts_with("publish to t failed: broker down (test)"), "{err}");
        assert_eq!(EventBusError::ack_failed(BusCause::new(cause.clone())), EventBusError::AckFailed { source: cause });

        // Clone and equality by message.
        let a = EventBusError::unavailable(std::io::Error::other("x"));
        assert_eq!(a.clone(), a);
        assert_eq!(a, EventBusError::unavailable(BusCause::msg("x")));
        assert_ne!(a, EventBusError::unavailable(BusCause::msg("y")));
    }

    #[test]
    fn bus_trait_is_object_safe() {
        fn takes(_: Option<Arc<dyn EventBus>>) {}
        takes(None);
    }
}
