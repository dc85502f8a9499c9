//! [`InMemoryEventBus`]: an event bus on one `tokio::sync::broadcast` channel, with consumer groups,
//! acknowledgements and the shared pattern syntax.
//!
//! Guarantees and limits:
//! - `publish` never blocks: the channel holds the last `capacity` events; a subscriber (or group)
//!   that falls further behind gets an [`EventBusError::Lagged`] item with the number of events it
//!   missed (also counted in [`BusStats::lagged`]), never a silent gap;
//! - a named group has one cursor shared by its members: each event goes to one member. The group
//!   outlives its members (like a Kafka group): events published while no member is subscribed wait
//!   for the next member, within the channel's capacity;
//! - in a named group, [`Delivery::nack`] puts the event back at the front of the group's queue;
//!   dropping a delivery without acknowledging it does nothing (there is no restart to redeliver on).
//!   An exclusive subscriber is a live listener: its deliveries need no `ack` and refuse `nack`
//!   ([`EventBusError::RedeliveryUnsupported`]);
//! - payloads and metadata are shared: every subscriber receives the same `Arc<BusMessage>`;
//! - nothing survives the process: it is not a durable bus.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{
    BusMessage, ConsumerGroup, Delivery, EventBus, EventBusError, EventStream, SerializedEvent, SharedAck, SubscribeOptions, Topic, TopicPattern,
};
use parking_lot::Mutex;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Future;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast};

/// Default channel capacity (events kept for slow subscribers).
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// Counters of an in-memory bus.
#[derive(Debug, Default)]
pub struct BusStats {
    published: AtomicU64,
    lagged: AtomicU64,
    redelivered: AtomicU64,
}

impl BusStats {
    /// Events published.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Events missed by lagging subscribers, in all.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
    /// Deliveries put back by `nack`.
    pub fn redelivered(&self) -> u64 {
        self.redelivered.load(Ordering::Relaxed)
    }
}

/// Events put back by `nack`, delivered before new ones.
#[derive(Default)]
struct Redeliveries {
    queue: Mutex<VecDeque<(Arc<BusMessage>, u32)>>,
    non_empty: AtomicBool,
    notify: Notify,
    stats: Arc<BusStats>,
}

impl Redeliveries {
    fn pop(&self) -> Option<(Arc<BusMessage>, u32)> {
        // The flag keeps the common path (nothing to redeliver) free of locking.
        if !self.non_empty.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.queue.lock();
        let item = q.pop_front();
        self.non_empty.store(!q.is_empty(), Ordering::Release);
        item
    }
}

impl SharedAck for Redeliveries {
    fn ack(&self, _message: &Arc<BusMessage>) -> Result<(), EventBusError> {
        Ok(())
    }

    fn nack(&self, message: Arc<BusMessage>, attempt: u32) -> Result<(), EventBusError> {
        let mut q = self.queue.lock();
        q.push_front((message, attempt + 1));
        self.non_empty.store(true, Ordering::Release);
        drop(q);
        self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        Ok(())
    }
}

struct Group {
    patterns: Vec<String>,
    receiver: tokio::sync::Mutex<broadcast::Receiver<Arc<BusMessage>>>,
    redeliveries: Arc<Redeliveries>,
}

/// An in-process [`EventBus`]. Clones share the bus.
#[derive(Clone)]
pub struct InMemoryEventBus {
    sender: broadcast::Sender<Arc<BusMessage>>,
    groups: Arc<Mutex<HashMap<String, Arc<Group>>>>,
    stats: Arc<BusStats>,
}

impl std::fmt::Debug for InMemoryEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventBus")
            .field("subscribers", &self.sender.receiver_count())
            .field("published", &self.stats.published())
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryEventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventBus {
    /// A bus keeping [`DEFAULT_CAPACITY`] events for slow subscribers.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus keeping `capacity` events for slow subscribers.
    pub fn with_capacity(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender, groups: Arc::default(), stats: Arc::default() }
    }

    /// The bus's counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }
}

/// A member of a named group: the cursor and the redelivery queue are the group's.
struct Subscription {
    group: Arc<Group>,
    patterns: Vec<TopicPattern>,
    group_name: String,
    stats: Arc<BusStats>,
}

impl Subscription {
    fn matches(&self, topic: &Topic) -> bool {
        self.patterns.iter().any(|p| p.matches_topic(topic))
    }

    fn delivery(&self, message: Arc<BusMessage>, attempt: u32) -> Delivery {
        Delivery::with_shared_ack(message, attempt, Arc::clone(&self.group.redeliveries) as Arc<dyn SharedAck>)
    }

    fn lagged(&self, missed: u64) -> EventBusError {
        self.stats.lagged.fetch_add(missed, Ordering::Relaxed);
        tracing::warn!(group = %self.group_name, missed, "in-memory bus subscriber lagged");
        EventBusError::Lagged { group: self.group_name.clone(), missed }
    }

    async fn next_item(&mut self) -> Option<Result<Delivery, EventBusError>> {
        loop {
            if let Some((message, attempt)) = self.group.redeliveries.pop() {
                return Some(Ok(self.delivery(message, attempt)));
            }
            let notified = self.group.redeliveries.notify.notified();
            // Both branches are cancel-safe: losing the race drops no event.
            let received = tokio::select! {
                received = async { self.group.receiver.lock().await.recv().await } => received,
                () = notified => continue,
            };
            match received {
                Ok(message) if self.matches(&message.topic) => return Some(Ok(self.delivery(message, 1))),
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => return Some(Err(self.lagged(missed))),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

type WaitForMessage = Pin<Box<dyn Future<Output = (Result<Arc<BusMessage>, RecvError>, broadcast::Receiver<Arc<BusMessage>>)> + Send>>;

/// An exclusive subscription: takes ready messages without building a future, and only parks on the
/// channel when it is empty.
struct Listener {
    rx: Option<broadcast::Receiver<Arc<BusMessage>>>,
    waiting: Option<WaitForMessage>,
    patterns: Vec<TopicPattern>,
    stats: Arc<BusStats>,
}

/// What a received message or error means for the stream.
enum Step {
    /// Yield this (`None` ends the stream).
    Yield(Option<Result<Delivery, EventBusError>>),
    /// Not for this subscriber: keep reading.
    Skip,
}

impl Listener {
    fn outcome(&self, received: Result<Arc<BusMessage>, RecvError>) -> Step {
        match received {
            Ok(message) if self.patterns.iter().any(|p| p.matches_topic(&message.topic)) => Step::Yield(Some(Ok(Delivery::listen_only(message)))),
            Ok(_) => Step::Skip,
            Err(RecvError::Lagged(missed)) => {
                self.stats.lagged.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(missed, "in-memory bus listener lagged");
                Step::Yield(Some(Err(EventBusError::Lagged { group: "exclusive".into(), missed })))
            }
            Err(RecvError::Closed) => Step::Yield(None),
        }
    }
}

impl futures::Stream for Listener {
    type Item = Result<Delivery, EventBusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                let Poll::Ready((received, rx)) = waiting.as_mut().poll(cx) else { return Poll::Pending };
                self.waiting = None;
                self.rx = Some(rx);
                if let Step::Yield(out) = self.outcome(received) {
                    return Poll::Ready(out);
                }
                continue;
            }
            let Some(rx) = self.rx.as_mut() else { return Poll::Ready(None) };
            let received = match rx.try_recv() {
                Ok(message) => Ok(message),
                Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Empty) => {
                    let Some(mut rx) = self.rx.take() else { return Poll::Ready(None) };
                    self.waiting = Some(Box::pin(async move {
                        let received = rx.recv().await;
                        (received, rx)
                    }));
                    continue;
                }
            };
            if let Step::Yield(out) = self.outcome(received) {
                return Poll::Ready(out);
            }
        }
    }
}

#[async_trait]
impl EventBus for InMemoryEventBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let topic = Topic::new(topic)?;
        let _span = tracing::trace_span!("publish", bus = "in-memory", topic = %topic, event_type = %event.event_type).entered();
        // No receiver is not an error: nobody subscribed yet, exactly as on a broker.
        let _ = self.sender.send(Arc::new(BusMessage { topic, event: event.clone() }));
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let patterns = parse_patterns(topics)?;
        let mut wanted: Vec<String> = topics.iter().map(|t| (*t).to_string()).collect();
        wanted.sort();
        wanted.dedup();
        let (group, group_name) = match options.group {
            ConsumerGroup::Exclusive => {
                return Ok(Box::pin(Listener { rx: Some(self.sender.subscribe()), waiting: None, patterns, stats: Arc::clone(&self.stats) }));
            }
            ConsumerGroup::Named(name) => {
                let mut groups = self.groups.lock();
                let group = groups
                    .entry(name.clone())
                    .or_insert_with(|| {
                        Arc::new(Group {
                            patterns: wanted.clone(),
                            receiver: tokio::sync::Mutex::new(self.sender.subscribe()),
                            redeliveries: Arc::new(Redeliveries { stats: Arc::clone(&self.stats), ..Redeliveries::default() }),
                        })
                    })
                    .clone();
                if group.patterns != wanted {
                    let reason = format!("group {name:?} already subscribes to {:?}; members of one group must subscribe to the same topics", group.patterns);
                    return Err(EventBusError::subscribe_failed(wanted, BusCause::msg(reason)));
                }
                (group, name)
            }
        };
        let subscription = Subscription { group, patterns, group_name, stats: Arc::clone(&self.stats) };
        Ok(Box::pin(futures::stream::unfold(subscription, |mut s| async move { s.next_item().await.map(|item| (item, s)) })))
    }

    fn backend(&self) -> &'static str {
        "in-memory"
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn event(n: u8) -> SerializedEvent {
        SerializedEvent::new("Tested.v1", vec![n], None)
    }

    async fn next(stream: &mut EventStream) -> Result<Delivery, EventBusError> {
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await.expect("a delivery in time").expect("the stream goes on")
    }

    #[tokio::test]
    async fn a_listener_gets_what_matches_its_patterns_in_order() {
        let bus = InMemoryEventBus::new();
        let mut listener = bus.subscribe_with(&["shop.*.events"], SubscribeOptions::exclusive()).await.unwrap();
        bus.publish("shop.order.events", &event(1)).await.unwrap();
        bus.publish("shop.audit", &event(2)).await.unwrap();
        bus.publish("shop.payment.events", &event(3)).await.unwrap();
        let first = next(&mut listener).await.unwrap();
        assert_eq!((first.topic().as_str(), &first.event().data[..]), ("shop.order.events", &[1][..]));
        let second = next(&mut listener).await.unwrap();
        assert_eq!(&second.event().data[..], &[3]);
        assert_eq!(second.nack().await, Err(EventBusError::RedeliveryUnsupported), "a listener cannot redeliver");
        assert_eq!(bus.stats().published(), 3);
    }

    #[tokio::test]
    async fn a_named_group_redelivers_a_nacked_event_first() {
        let bus = InMemoryEventBus::new();
        let mut member = bus.subscribe_with(&["a.b"], SubscribeOptions::group("g")).await.unwrap();
        bus.publish("a.b", &event(1)).await.unwrap();
        bus.publish("a.b", &event(2)).await.unwrap();
        let first = next(&mut member).await.unwrap();
        first.nack().await.unwrap();
        let again = next(&mut member).await.unwrap();
        assert_eq!((&again.event().data[..], again.attempt()), (&[1][..], 2));
        again.ack().await.unwrap();
        assert_eq!(&next(&mut member).await.unwrap().event().data[..], &[2]);
        assert_eq!(bus.stats().redelivered(), 1);
    }

    #[tokio::test]
    async fn members_of_one_group_must_subscribe_to_the_same_topics() {
        let bus = InMemoryEventBus::new();
        let _member = bus.subscribe_with(&["a.b"], SubscribeOptions::group("g")).await.unwrap();
        let refused = bus.subscribe_with(&["a.c"], SubscribeOptions::group("g")).await.err().expect("refused");
        assert!(matches!(refused, EventBusError::SubscribeFailed { .. }), "{refused}");
    }

    #[tokio::test]
    async fn a_lagging_listener_is_told_how_many_events_it_missed() {
        let bus = InMemoryEventBus::with_capacity(2);
        let mut listener = bus.subscribe_with(&["a"], SubscribeOptions::exclusive()).await.unwrap();
        for n in 0..5 {
            bus.publish("a", &event(n)).await.unwrap();
        }
        assert_eq!(next(&mut listener).await.unwrap_err(), EventBusError::Lagged { group: "exclusive".into(), missed: 3 });
        assert_eq!(&next(&mut listener).await.unwrap().event().data[..], &[3], "resumes at the oldest event kept");
        assert_eq!(bus.stats().lagged(), 3);
    }

    #[tokio::test]
    async fn malformed_topics_are_refused() {
        let bus = InMemoryEventBus::new();
        assert!(matches!(bus.publish("a..b", &event(0)).await, Err(EventBusError::InvalidTopic(_))));
        assert!(matches!(bus.subscribe(&["a.>.b"]).await.err(), Some(EventBusError::InvalidTopic(_))));
    }
}
