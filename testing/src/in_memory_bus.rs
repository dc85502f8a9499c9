//! [`InMemoryEventBus`]: an event bus on one `tokio::sync::broadcast` channel, with consumer groups,
//! acknowledgements and the shared pattern syntax.
//!
//! Guarantees and limits:
//! - `publish` never blocks: the channel holds the last `capacity` events; a subscriber (or group)
//!   that falls further behind gets an [`EventBusError::Lagged`] item with the number of events it
//!   missed (also counted in [`BusStats::lagged`]), never a silent gap;
//! - payloads are shared: every subscriber receives the same `Arc<SerializedEvent>` (no copy);
//! - a named group has one cursor shared by its members: each event goes to one member. The group
//!   outlives its members (like a Kafka group): events published while no member is subscribed wait
//!   for the next member, within the channel's capacity;
//! - [`Delivery::nack`] puts the event back at the front of the subscriber's (or group's) queue;
//!   dropping a delivery without acknowledging it does nothing (there is no restart to redeliver on);
//! - nothing survives the process: it is not a durable bus.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{ConsumerGroup, Delivery, EventBus, EventBusError, EventStream, SerializedEvent, SharedAck, SubscribeOptions, Topic, TopicPattern};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};

/// Default channel capacity (events kept for slow subscribers).
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

struct Envelope {
    topic: Topic,
    event: Arc<SerializedEvent>,
}

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
    queue: Mutex<VecDeque<(Topic, Arc<SerializedEvent>, u32)>>,
    non_empty: AtomicBool,
    notify: Notify,
    stats: Arc<BusStats>,
}

impl Redeliveries {
    fn pop(&self) -> Option<(Topic, Arc<SerializedEvent>, u32)> {
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
    fn ack(&self, _topic: &Topic, _event: &Arc<SerializedEvent>) -> Result<(), EventBusError> {
        Ok(())
    }

    fn nack(&self, topic: Topic, event: Arc<SerializedEvent>, attempt: u32) -> Result<(), EventBusError> {
        let mut q = self.queue.lock();
        q.push_front((topic, event, attempt + 1));
        self.non_empty.store(true, Ordering::Release);
        drop(q);
        self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        Ok(())
    }
}

struct Group {
    patterns: Vec<String>,
    receiver: tokio::sync::Mutex<broadcast::Receiver<Arc<Envelope>>>,
    redeliveries: Arc<Redeliveries>,
}

/// An in-process [`EventBus`]. Clones share the bus.
#[derive(Clone)]
pub struct InMemoryEventBus {
    sender: broadcast::Sender<Arc<Envelope>>,
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

enum Source {
    Own(broadcast::Receiver<Arc<Envelope>>),
    Group(Arc<Group>),
}

struct Subscription {
    source: Source,
    patterns: Vec<TopicPattern>,
    redeliveries: Arc<Redeliveries>,
    group_name: String,
    stats: Arc<BusStats>,
}

impl Subscription {
    fn matches(&self, topic: &Topic) -> bool {
        self.patterns.iter().any(|p| p.matches(topic.as_str()))
    }

    fn delivery(&self, topic: Topic, event: Arc<SerializedEvent>, attempt: u32) -> Delivery {
        Delivery::with_shared_ack(topic, event, attempt, Arc::clone(&self.redeliveries) as Arc<dyn SharedAck>)
    }

    fn lagged(&self, missed: u64) -> EventBusError {
        self.stats.lagged.fetch_add(missed, Ordering::Relaxed);
        tracing::warn!(group = %self.group_name, missed, "in-memory bus subscriber lagged");
        EventBusError::Lagged { group: self.group_name.clone(), missed }
    }

    async fn next_item(&mut self) -> Option<Result<Delivery, EventBusError>> {
        loop {
            if let Some((topic, event, attempt)) = self.redeliveries.pop() {
                return Some(Ok(self.delivery(topic, event, attempt)));
            }
            let received = match &mut self.source {
                Source::Own(rx) => rx.recv().await,
                Source::Group(group) => {
                    let redeliveries = Arc::clone(&self.redeliveries);
                    let notified = redeliveries.notify.notified();
                    // Both branches are cancel-safe: losing the race drops no event.
                    tokio::select! {
                        received = async { group.receiver.lock().await.recv().await } => received,
                        () = notified => continue,
                    }
                }
            };
            match received {
                Ok(envelope) if self.matches(&envelope.topic) => {
                    return Some(Ok(self.delivery(envelope.topic.clone(), Arc::clone(&envelope.event), 1)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some(Err(self.lagged(missed))),
                Err(broadcast::error::RecvError::Closed) => return None,
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
        let _ = self.sender.send(Arc::new(Envelope { topic, event: Arc::new(event.clone()) }));
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let patterns = parse_patterns(topics)?;
        let mut wanted: Vec<String> = topics.iter().map(|t| (*t).to_string()).collect();
        wanted.sort();
        wanted.dedup();
        let (source, redeliveries, group_name) = match options.group {
            ConsumerGroup::Exclusive => {
                let redeliveries = Arc::new(Redeliveries { stats: Arc::clone(&self.stats), ..Redeliveries::default() });
                (Source::Own(self.sender.subscribe()), redeliveries, "exclusive".to_string())
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
                    return Err(EventBusError::SubscribeFailed {
                        patterns: wanted,
                        reason: format!("group {name:?} already subscribes to {:?}; members of one group must subscribe to the same topics", group.patterns),
                    });
                }
                let redeliveries = Arc::clone(&group.redeliveries);
                (Source::Group(group), redeliveries, name)
            }
        };
        let subscription = Subscription { source, patterns, redeliveries, group_name, stats: Arc::clone(&self.stats) };
        Ok(Box::pin(futures::stream::unfold(subscription, |mut s| async move { s.next_item().await.map(|item| (item, s)) })))
    }

    fn backend(&self) -> &'static str {
        "in-memory"
    }
}
