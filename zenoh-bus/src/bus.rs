//! [`ZenohEventBus`]: publish with `put`, subscribe with Zenoh subscribers merged into one stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{
    BusMessage, CodecError, ConsumerGroup, Delivery, EventBus, EventBusError, EventStream, SerializedEvent, SharedAck, SubscribeOptions, Topic,
    TopicPattern,
};
use futures::StreamExt;
use parking_lot::Mutex;
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;

use crate::config::{ZenohConfig, ZenohError};
use crate::keys::{self, SESSION_HEADER};
use crate::metadata;

/// Counters of a Zenoh bus.
#[derive(Debug, Default)]
pub struct ZenohStats {
    published: AtomicU64,
    lagged: AtomicU64,
    undecodable: AtomicU64,
}

impl ZenohStats {
    /// Events published (session-scoped copies not counted).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Samples dropped because a subscription's buffer was full (each reported as `Lagged`).
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
    /// Samples that were not composable-rust events (each reported as `Decode`).
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }
}

type Item = Result<(Arc<BusMessage>, u32), EventBusError>;

/// What the subscribers of one subscription (or one named group in this process) decode into.
struct Feed {
    /// Undeclared when the feed is dropped, i.e. when its last member goes.
    _subscribers: Vec<Subscriber<()>>,
    tx: flume::Sender<Item>,
    rx: flume::Receiver<Item>,
    missed: Arc<AtomicU64>,
    group: String,
}

impl SharedAck for Feed {
    fn ack(&self, _message: &Arc<BusMessage>) -> Result<(), EventBusError> {
        Ok(())
    }

    fn nack(&self, message: Arc<BusMessage>, attempt: u32) -> Result<(), EventBusError> {
        self.tx
            .try_send(Ok((message, attempt + 1)))
            .map_err(|e| EventBusError::AckFailed { reason: format!("cannot queue the redelivery: {e}; the subscription is full or closed") })
    }
}

/// Which samples a subscription keeps once Zenoh routed them to it.
#[derive(Clone)]
enum Filter {
    /// Topic patterns: the key expression is a superset, narrow to the exact pattern rule.
    Patterns(Arc<[TopicPattern]>),
    /// Native key expressions: Zenoh's matching is the rule.
    Native,
}

impl Filter {
    fn keeps(&self, topic: &Topic) -> bool {
        match self {
            Filter::Patterns(patterns) => patterns.iter().any(|p| p.matches_topic(topic)),
            Filter::Native => true,
        }
    }
}

/// Turns a sample into a bus message; `Ok(None)` for samples the filter drops.
fn decode_sample(sample: &Sample, filter: &Filter) -> Result<Option<Arc<BusMessage>>, EventBusError> {
    let key = sample.key_expr().as_str();
    let decode_error = |reason: String| EventBusError::Decode { topic: key.to_owned(), source: CodecError::Malformed { what: "zenoh key".into(), reason } };
    let parts = keys::parse_key(key).ok_or_else(|| decode_error("the key is outside the events/{topic}/... layout".into()))?;
    let topic = Topic::new(parts.topic).map_err(|e| decode_error(format!("the topic chunk is not a valid topic: {e}")))?;
    if !filter.keeps(&topic) {
        return Ok(None);
    }
    let payload = Bytes::from(sample.payload().to_bytes().into_owned());
    let event = metadata::decode(sample.attachment(), payload).map_err(|source| EventBusError::Decode { topic: key.to_owned(), source })?;
    Ok(Some(Arc::new(BusMessage { topic, event })))
}

/// The Zenoh event bus. Clones share the session.
///
/// See the [crate documentation](crate) for the key layout and what `subscribe` guarantees.
#[derive(Clone)]
pub struct ZenohEventBus {
    inner: Arc<Inner>,
}

struct Inner {
    session: zenoh::Session,
    config: ZenohConfig,
    groups: Mutex<HashMap<(String, Vec<String>), Weak<Feed>>>,
    stats: Arc<ZenohStats>,
}

impl std::fmt::Debug for ZenohEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohEventBus").field("zid", &self.inner.session.zid()).field("mode", &self.inner.config.mode).finish_non_exhaustive()
    }
}

impl ZenohEventBus {
    /// An embedded bus: an in-process Zenoh session with no network activity.
    pub async fn embedded() -> Result<Self, ZenohError> {
        Self::open(ZenohConfig::embedded()).await
    }

    /// Opens a session with `config`.
    pub async fn open(config: ZenohConfig) -> Result<Self, ZenohError> {
        let zenoh_config = config.to_zenoh()?;
        let session = zenoh::open(zenoh_config).await.map_err(|e| ZenohError::Open { reason: e.to_string() })?;
        tracing::debug!(zid = %session.zid(), mode = ?config.mode, "zenoh session opened");
        Ok(Self::from_session(session, config))
    }

    /// Wraps a session the caller opened (its settings are the caller's; `config` only supplies the
    /// bus's own settings).
    pub fn from_session(session: zenoh::Session, config: ZenohConfig) -> Self {
        Self { inner: Arc::new(Inner { session, config, groups: Mutex::default(), stats: Arc::default() }) }
    }

    /// The underlying session (for raw access, or to declare queryables beside the bus).
    pub fn session(&self) -> &zenoh::Session {
        &self.inner.session
    }

    /// The bus's counters.
    pub fn stats(&self) -> &ZenohStats {
        &self.inner.stats
    }

    /// Every event published with the [`SESSION_HEADER`] header set to `session_id`, from any topic:
    /// a live feed of `sessions/{session_id}/**`.
    pub async fn subscribe_session(&self, session_id: &str) -> Result<EventStream, EventBusError> {
        let key = keys::session_key_expr(session_id);
        self.subscribe_with(&[&key], SubscribeOptions::exclusive()).await
    }

    fn put(&self, key: String, event: &SerializedEvent, attachment: ZBytes) -> Result<(), String> {
        self.inner
            .session
            .put(key, ZBytes::from(event.data.clone()))
            .attachment(attachment)
            // Block, not Drop: a congested link slows the publisher down instead of discarding the
            // sample after `publish` already said Ok.
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| e.to_string())
    }

    fn open_feed(&self, key_exprs: &[String], filter: &Filter, group: String) -> Result<Feed, String> {
        let (tx, rx) = flume::bounded(self.inner.config.subscriber_capacity);
        let missed = Arc::new(AtomicU64::new(0));
        let mut subscribers = Vec::with_capacity(key_exprs.len());
        for key_expr in key_exprs {
            let (tx, filter, missed, stats) = (tx.clone(), filter.clone(), Arc::clone(&missed), Arc::clone(&self.inner.stats));
            let subscriber = self
                .inner
                .session
                .declare_subscriber(key_expr.as_str())
                // The callback runs on Zenoh's (or the local publisher's) thread and must never block it:
                // a full buffer is counted and reported as lag instead.
                .callback(move |sample| {
                    let item = match decode_sample(&sample, &filter) {
                        Ok(None) => return,
                        Ok(Some(message)) => Ok((message, 1)),
                        Err(e) => {
                            stats.undecodable.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "zenoh sample is not a composable-rust event");
                            Err(e)
                        }
                    };
                    if let Err(flume::TrySendError::Full(_)) = tx.try_send(item) {
                        missed.fetch_add(1, Ordering::Relaxed);
                        stats.lagged.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .wait()
                .map_err(|e| format!("key expression {key_expr:?}: {e}"))?;
            subscribers.push(subscriber);
        }
        Ok(Feed { _subscribers: subscribers, tx, rx, missed, group })
    }
}

/// Splits patterns into key expressions and a filter: all in the shared syntax, or all native.
fn key_exprs_for(topics: &[&str]) -> Result<(Vec<String>, Filter), EventBusError> {
    if topics.iter().any(|t| t.contains('/')) {
        if let Some(t) = topics.iter().find(|t| !t.contains('/')) {
            return Err(EventBusError::SubscribeFailed {
                patterns: topics.iter().map(ToString::to_string).collect(),
                reason: format!("{t:?} is a topic pattern among native key expressions: subscribe to each kind separately"),
            });
        }
        for t in topics {
            zenoh::key_expr::KeyExpr::try_from(*t).map_err(|e| EventBusError::SubscribeFailed {
                patterns: topics.iter().map(ToString::to_string).collect(),
                reason: format!("{t:?} is not a valid Zenoh key expression: {e}"),
            })?;
        }
        return Ok((topics.iter().map(ToString::to_string).collect(), Filter::Native));
    }
    let patterns = parse_patterns(topics)?;
    let mut exprs: Vec<String> = patterns.iter().map(keys::pattern_key_expr).collect();
    exprs.sort_unstable();
    exprs.dedup();
    Ok((exprs, Filter::Patterns(patterns.into())))
}

fn member_stream(feed: Arc<Feed>, listen_only: bool) -> EventStream {
    futures::stream::unfold(feed, move |feed| async move {
        let missed = feed.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            tracing::warn!(group = %feed.group, missed, "zenoh subscriber lagged");
            let lagged = EventBusError::Lagged { group: feed.group.clone(), missed };
            return Some((Err(lagged), feed));
        }
        let item = feed.rx.recv_async().await.ok()?;
        let item = item.map(|(message, attempt)| {
            if listen_only { Delivery::listen_only(message) } else { Delivery::with_shared_ack(message, attempt, Arc::clone(&feed) as Arc<dyn SharedAck>) }
        });
        Some((item, feed))
    })
    .boxed()
}

#[async_trait]
impl EventBus for ZenohEventBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let topic = Topic::new(topic)?;
        let span = tracing::debug_span!("zenoh.publish", topic = %topic, event_type = %event.event_type, event_id = %event.event_id);
        let _enter = span.enter();
        let attachment = metadata::encode(event);
        let failed = |reason: String| EventBusError::PublishFailed { topic: topic.to_string(), reason, retryable: true };
        if let Some(session_id) = event.metadata.headers.get(SESSION_HEADER) {
            self.put(keys::session_event_key(session_id, &topic, event), event, attachment.clone()).map_err(failed)?;
        }
        self.put(keys::event_key(&topic, event), event, attachment).map_err(failed)?;
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        drop(_enter);
        // A local put delivers synchronously and never yields: let a publishing loop give way to
        // the subscribers it feeds on the same runtime.
        tokio::task::coop::consume_budget().await;
        Ok(())
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let (exprs, filter) = key_exprs_for(topics)?;
        let failed = |reason: String| EventBusError::SubscribeFailed { patterns: topics.iter().map(ToString::to_string).collect(), reason };
        let _span = tracing::debug_span!("zenoh.subscribe", key_exprs = ?exprs, group = ?options.group).entered();
        match options.group {
            ConsumerGroup::Exclusive => {
                let feed = self.open_feed(&exprs, &filter, "exclusive".into()).map_err(failed)?;
                Ok(member_stream(Arc::new(feed), true))
            }
            ConsumerGroup::Named(name) => {
                let mut groups = self.inner.groups.lock();
                let key = (name.clone(), exprs.clone());
                let feed = match groups.get(&key).and_then(Weak::upgrade) {
                    Some(feed) => feed,
                    None => {
                        let feed = Arc::new(self.open_feed(&exprs, &filter, name).map_err(failed)?);
                        groups.retain(|_, weak| weak.strong_count() > 0);
                        groups.insert(key, Arc::downgrade(&feed));
                        feed
                    }
                };
                Ok(member_stream(feed, false))
            }
        }
    }

    fn backend(&self) -> &'static str {
        "zenoh"
    }
}
