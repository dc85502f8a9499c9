//! Event bus decorators: [`EventBus`] wrappers that add one concern to any bus.
//!
//! - [`NamespacedBus`] puts every topic and every consumer group name under `{namespace}.`, so runs
//!   or tenants sharing one broker never see each other's events or share a group;
//! - [`ObservedBus`] reports every publish (successful or failed) and every delivery to a
//!   [`BusObserver`]; [`CountingBus`] is the one that counts them ([`BusCounters`]).
//!
//! Both take an `Arc<dyn EventBus>` and are one themselves, so they stack:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use composable_rust_core::{EventBus, SerializedEvent};
//! use composable_rust_memory::InMemoryEventBus;
//! use composable_rust_runtime::decorators::{CountingBus, NamespacedBus};
//!
//! let broker: Arc<dyn EventBus> = Arc::new(InMemoryEventBus::new());
//! let bus = Arc::new(CountingBus::counting(Arc::new(NamespacedBus::new(broker, "run-42")?)));
//! bus.publish("order.events", &SerializedEvent::new("OrderPlaced.v1", vec![1], None)).await?; // on run-42.order.events
//! assert_eq!(bus.counters().published(), 1);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::{
    BusMessage, ConsumerGroup, Delivery, DeliveryAck, EventBus, EventBusError, EventStream, SerializedEvent, SubscribeOptions, Topic, TopicError,
};
use futures::StreamExt;
use futures::future::BoxFuture;

/// A bus whose topics and consumer groups all live under `{namespace}.`.
///
/// - `publish("order.events", ..)` publishes to `{namespace}.order.events`;
/// - `subscribe_with(&["order.*"], ..)` subscribes to `{namespace}.order.*`, so a pattern never
///   reaches outside the namespace (`>` means everything in it);
/// - a named consumer group `g` is `{namespace}.g` on the inner bus, including the default group of
///   [`EventBus::subscribe`] (named after the topics as given, then prefixed), so two namespaces never
///   share a group; exclusive subscriptions stay exclusive;
/// - deliveries carry the topic as the caller named it (`order.events`), the namespace removed, so
///   handlers see the same topics with or without the decorator. Acknowledgements go to the inner
///   delivery unchanged.
///
/// Native key expressions (patterns containing `/`, which the Zenoh bus accepts) cannot be put under
/// a namespace and are refused with [`EventBusError::SubscribeFailed`].
pub struct NamespacedBus {
    inner: Arc<dyn EventBus>,
    /// `{namespace}.`
    prefix: String,
}

impl fmt::Debug for NamespacedBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespacedBus").field("namespace", &self.namespace()).field("inner", &self.inner.backend()).finish_non_exhaustive()
    }
}

impl NamespacedBus {
    /// Wraps `inner`. The namespace must itself be a valid topic (one or more dot-separated segments
    /// of ASCII letters, digits, `_` and `-`, as `run-42` or `tenant.a`); otherwise the topic error
    /// says why.
    pub fn new(inner: Arc<dyn EventBus>, namespace: &str) -> Result<Self, TopicError> {
        Topic::new(namespace)?;
        Ok(Self { inner, prefix: format!("{namespace}.") })
    }

    /// The namespace, without the trailing dot.
    pub fn namespace(&self) -> &str {
        &self.prefix[..self.prefix.len() - 1]
    }

    /// The topic (or pattern) `topic` is on the inner bus: `{namespace}.{topic}`.
    pub fn inner_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The consumer group `group` is on the inner bus: `{namespace}.{group}`.
    pub fn inner_group(&self, group: &str) -> String {
        format!("{}{group}", self.prefix)
    }

    /// The wrapped bus.
    pub fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }
}

/// Forwards the acknowledgement of a rewritten delivery to the delivery it came from.
struct Forward(Delivery);

impl DeliveryAck for Forward {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        Box::pin(self.0.ack())
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        Box::pin(self.0.nack())
    }
}

/// `delivery` with `prefix` taken off its topic (as it is if the topic does not start with it).
fn strip_namespace(prefix: &str, delivery: Delivery) -> Delivery {
    let Some(topic) = delivery.topic().as_str().strip_prefix(prefix).and_then(|t| Topic::new(t).ok()) else { return delivery };
    let message = Arc::new(BusMessage { topic, event: delivery.event().clone() });
    let attempt = delivery.attempt();
    Delivery::with_ack(message, attempt, Box::new(Forward(delivery)))
}

#[async_trait]
impl EventBus for NamespacedBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        self.inner.publish(&self.inner_topic(topic), event).await
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        if let Some(native) = topics.iter().find(|t| t.contains('/')) {
            let reason =
                format!("{native:?} is a native key expression, which cannot be put under the namespace {:?}; subscribe with topic patterns", self.namespace());
            return Err(EventBusError::subscribe_failed(topics, BusCause::msg(reason)));
        }
        let inner_topics: Vec<String> = topics.iter().map(|t| self.inner_topic(t)).collect();
        let refs: Vec<&str> = inner_topics.iter().map(String::as_str).collect();
        let options = match options.group {
            ConsumerGroup::Named(name) => SubscribeOptions::group(self.inner_group(&name)),
            ConsumerGroup::Exclusive => SubscribeOptions::exclusive(),
        };
        let stream = self.inner.subscribe_with(&refs, options).await?;
        let prefix = self.prefix.clone();
        Ok(Box::pin(stream.map(move |item| item.map(|delivery| strip_namespace(&prefix, delivery)))))
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// What an [`ObservedBus`] tells about the traffic through it. Every method has an empty default:
/// implement the ones you need. They run on the publisher's or the consumer's task, so keep them
/// short (count, log, sample).
pub trait BusObserver: Send + Sync + 'static {
    /// A publish to `topic` returned `outcome`.
    fn on_publish(&self, topic: &str, event: &SerializedEvent, outcome: Result<(), &EventBusError>) {
        let _ = (topic, event, outcome);
    }

    /// A subscription yielded `delivery` (a first delivery or a redelivery).
    fn on_delivery(&self, delivery: &Delivery) {
        let _ = delivery;
    }

    /// A subscription yielded an error item (lag, an undecodable message); the stream goes on.
    fn on_stream_error(&self, error: &EventBusError) {
        let _ = error;
    }
}

/// Counters of a [`CountingBus`]: publishes that succeeded and failed, deliveries, error items.
#[derive(Debug, Default)]
pub struct BusCounters {
    published: AtomicU64,
    publish_failures: AtomicU64,
    delivered: AtomicU64,
    stream_errors: AtomicU64,
}

impl BusCounters {
    /// Publishes that returned `Ok`.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publishes that returned an error.
    pub fn publish_failures(&self) -> u64 {
        self.publish_failures.load(Ordering::Relaxed)
    }

    /// Deliveries handed to subscribers (redeliveries included).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Error items handed to subscribers (lag, undecodable messages).
    pub fn stream_errors(&self) -> u64 {
        self.stream_errors.load(Ordering::Relaxed)
    }
}

impl BusObserver for BusCounters {
    fn on_publish(&self, _topic: &str, _event: &SerializedEvent, outcome: Result<(), &EventBusError>) {
        let counter = if outcome.is_ok() { &self.published } else { &self.publish_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn on_delivery(&self, _delivery: &Delivery) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn on_stream_error(&self, _error: &EventBusError) {
        self.stream_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bus that reports its traffic to an observer `O` and otherwise changes nothing: same topics,
/// same results, same deliveries and acknowledgements.
pub struct ObservedBus<O: BusObserver = BusCounters> {
    inner: Arc<dyn EventBus>,
    observer: Arc<O>,
}

/// A bus that counts publishes (successful and failed) and deliveries: [`CountingBus::counting`],
/// then [`CountingBus::counters`].
pub type CountingBus = ObservedBus<BusCounters>;

impl<O: BusObserver> fmt::Debug for ObservedBus<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedBus").field("inner", &self.inner.backend()).finish_non_exhaustive()
    }
}

impl<O: BusObserver> ObservedBus<O> {
    /// Wraps `inner`, reporting to `observer` (shared: keep a clone to read it).
    pub fn new(inner: Arc<dyn EventBus>, observer: Arc<O>) -> Self {
        Self { inner, observer }
    }

    /// The observer.
    pub fn observer(&self) -> &Arc<O> {
        &self.observer
    }

    /// The wrapped bus.
    pub fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }
}

impl CountingBus {
    /// Wraps `inner` with fresh counters.
    pub fn counting(inner: Arc<dyn EventBus>) -> Self {
        Self::new(inner, Arc::default())
    }

    /// The counters so far.
    pub fn counters(&self) -> &BusCounters {
        &self.observer
    }
}

#[async_trait]
impl<O: BusObserver> EventBus for ObservedBus<O> {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let outcome = self.inner.publish(topic, event).await;
        self.observer.on_publish(topic, event, outcome.as_ref().copied());
        outcome
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let stream = self.inner.subscribe_with(topics, options).await?;
        let observer = Arc::clone(&self.observer);
        Ok(Box::pin(stream.inspect(move |item| match item {
            Ok(delivery) => observer.on_delivery(delivery),
            Err(error) => observer.on_stream_error(error),
        })))
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use composable_rust_memory::InMemoryEventBus;
    use parking_lot::Mutex;

    use super::*;

    fn event(n: u8) -> SerializedEvent {
        SerializedEvent::new("Tested.v1", vec![n], None)
    }

    async fn next(stream: &mut EventStream) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("a delivery in time").expect("stream goes on").expect("a delivery")
    }

    async fn nothing_more(stream: &mut EventStream) {
        assert!(tokio::time::timeout(Duration::from_millis(50), stream.next()).await.is_err(), "no further delivery expected");
    }

    fn namespaced(inner: &Arc<InMemoryEventBus>, namespace: &str) -> NamespacedBus {
        NamespacedBus::new(Arc::clone(inner) as Arc<dyn EventBus>, namespace).unwrap()
    }

    #[tokio::test]
    async fn topics_live_under_the_namespace_and_deliveries_show_them_without_it() {
        let broker = Arc::new(InMemoryEventBus::new());
        let bus = namespaced(&broker, "run-1");
        let mut raw = broker.subscribe_with(&[">"], SubscribeOptions::exclusive()).await.unwrap();
        let mut through = bus.subscribe_with(&["order.*"], SubscribeOptions::exclusive()).await.unwrap();
        bus.publish("order.events", &event(1)).await.unwrap();
        assert_eq!(next(&mut raw).await.topic().as_str(), "run-1.order.events");
        let delivered = next(&mut through).await;
        assert_eq!((delivered.topic().as_str(), &delivered.event().data[..]), ("order.events", &[1][..]));
        assert_eq!(delivered.message().topic.as_str(), "order.events");
        assert_eq!(bus.namespace(), "run-1");
        assert_eq!(bus.backend(), "in-memory");
    }

    #[tokio::test]
    async fn two_namespaces_on_one_broker_stay_apart() {
        let broker = Arc::new(InMemoryEventBus::new());
        let (a, b) = (namespaced(&broker, "a"), namespaced(&broker, "b"));
        let mut in_a = a.subscribe(&["order.events"]).await.unwrap();
        let mut in_b = b.subscribe(&["order.events"]).await.unwrap();
        let mut everything_in_b = b.subscribe_with(&[">"], SubscribeOptions::exclusive()).await.unwrap();
        a.publish("order.events", &event(1)).await.unwrap();
        b.publish("order.events", &event(2)).await.unwrap();
        assert_eq!(&next(&mut in_a).await.event().data[..], &[1]);
        assert_eq!(&next(&mut in_b).await.event().data[..], &[2]);
        assert_eq!(&next(&mut everything_in_b).await.event().data[..], &[2], "`>` means everything in the namespace");
        nothing_more(&mut in_a).await;
        nothing_more(&mut in_b).await;
        nothing_more(&mut everything_in_b).await;
    }

    #[tokio::test]
    async fn group_names_are_namespaced_so_namespaces_never_share_a_group() {
        let broker = Arc::new(InMemoryEventBus::new());
        let (a, b) = (namespaced(&broker, "a"), namespaced(&broker, "b"));
        // Same group name, same logical topic, different namespaces: different groups on the broker
        // (the in-memory bus refuses one group with two topic sets, so sharing would fail here).
        let mut in_a = a.subscribe_with(&["t"], SubscribeOptions::group("workers")).await.unwrap();
        let mut in_b = b.subscribe_with(&["t"], SubscribeOptions::group("workers")).await.unwrap();
        // The group is `a.workers` on the broker: a raw member of it shares a's work.
        let mut raw_member = broker.subscribe_with(&["a.t"], SubscribeOptions::group("a.workers")).await.unwrap();
        a.publish("t", &event(1)).await.unwrap();
        a.publish("t", &event(2)).await.unwrap();
        b.publish("t", &event(3)).await.unwrap();
        assert_eq!(&next(&mut in_b).await.event().data[..], &[3]);
        let mut seen = Vec::new();
        for _ in 0..2 {
            tokio::select! {
                d = next(&mut in_a) => seen.push(d.event().data[0]),
                d = next(&mut raw_member) => seen.push(d.event().data[0]),
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, [1, 2], "the namespaced member and the raw member of a.workers share a's events");
    }

    #[tokio::test]
    async fn acknowledgements_reach_the_inner_delivery() {
        let broker = Arc::new(InMemoryEventBus::new());
        let bus = namespaced(&broker, "ns");
        let mut member = bus.subscribe_with(&["t"], SubscribeOptions::group("g")).await.unwrap();
        bus.publish("t", &event(1)).await.unwrap();
        next(&mut member).await.nack().await.unwrap();
        let again = next(&mut member).await;
        assert_eq!((again.topic().as_str(), again.attempt()), ("t", 2));
        again.ack().await.unwrap();
        assert_eq!(broker.stats().redelivered(), 1);
        let mut listener = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
        bus.publish("t", &event(2)).await.unwrap();
        assert_eq!(next(&mut listener).await.nack().await, Err(EventBusError::RedeliveryUnsupported), "a listener still cannot redeliver");
    }

    #[tokio::test]
    async fn bad_namespaces_and_native_key_expressions_are_refused() {
        let broker: Arc<dyn EventBus> = Arc::new(InMemoryEventBus::new());
        for bad in ["", "a..b", "a.*", "with space", "trailing."] {
            assert!(NamespacedBus::new(Arc::clone(&broker), bad).is_err(), "{bad:?}");
        }
        let bus = NamespacedBus::new(broker, "tenant.a").unwrap();
        let err = bus.subscribe_with(&["events/Order/**"], SubscribeOptions::exclusive()).await.err().expect("refused");
        assert!(matches!(err, EventBusError::SubscribeFailed { .. }) && err.to_string().contains("native key expression"), "{err}");
        assert!(matches!(bus.publish("a..b", &event(0)).await, Err(EventBusError::InvalidTopic(_))));
    }

    #[tokio::test]
    async fn the_counting_bus_counts_publishes_failures_and_deliveries() {
        let bus = CountingBus::counting(Arc::new(InMemoryEventBus::new()));
        let mut group = bus.subscribe_with(&["t"], SubscribeOptions::group("g")).await.unwrap();
        bus.publish("t", &event(1)).await.unwrap();
        bus.publish("t", &event(2)).await.unwrap();
        assert!(bus.publish("not a topic", &event(3)).await.is_err());
        next(&mut group).await.nack().await.unwrap();
        next(&mut group).await.ack().await.unwrap();
        next(&mut group).await.ack().await.unwrap();
        let counters = bus.counters();
        assert_eq!((counters.published(), counters.publish_failures(), counters.delivered(), counters.stream_errors()), (2, 1, 3, 0));
    }

    #[tokio::test]
    async fn the_counting_bus_counts_lag_reports_as_stream_errors() {
        let bus = CountingBus::counting(Arc::new(InMemoryEventBus::with_capacity(1)));
        let mut listener = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
        for n in 0..3 {
            bus.publish("t", &event(n)).await.unwrap();
        }
        let lagged = tokio::time::timeout(Duration::from_secs(5), listener.next()).await.unwrap().unwrap();
        assert!(matches!(lagged, Err(EventBusError::Lagged { missed: 2, .. })), "{lagged:?}");
        next(&mut listener).await;
        assert_eq!((bus.counters().stream_errors(), bus.counters().delivered()), (1, 1));
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl BusObserver for Log {
        fn on_publish(&self, topic: &str, event: &SerializedEvent, outcome: Result<(), &EventBusError>) {
            self.0.lock().push(format!("publish {topic} {} {}", event.event_type, if outcome.is_ok() { "ok" } else { "failed" }));
        }

        fn on_delivery(&self, delivery: &Delivery) {
            self.0.lock().push(format!("deliver {} attempt {}", delivery.topic(), delivery.attempt()));
        }
    }

    #[tokio::test]
    async fn an_observer_sees_every_publish_and_delivery_and_stacks_with_a_namespace() {
        let broker = Arc::new(InMemoryEventBus::new());
        let log = Arc::new(Log::default());
        let bus = ObservedBus::new(Arc::new(namespaced(&broker, "ns")), Arc::clone(&log));
        let mut listener = bus.subscribe_with(&["t"], SubscribeOptions::exclusive()).await.unwrap();
        bus.publish("t", &event(1)).await.unwrap();
        next(&mut listener).await;
        assert_eq!(*log.0.lock(), ["publish t Tested.v1 ok", "deliver t attempt 1"]);
        assert!(Arc::ptr_eq(bus.observer(), &log));
    }
}
