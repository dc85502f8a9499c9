//! [`ZenohEventBus`]: publish with `put`, subscribe with Zenoh subscribers merged into one stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use composable_rust_core::dead_letter::{DeadLetter, DeadLetterSink};
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{
    BusMessage, CodecError, ConsumerGroup, Delivery, EventBus, EventBusError, EventStream, SerializedEvent, SharedAck, SubscribeOptions, Topic, TopicPattern,
};
use futures::StreamExt;
use parking_lot::Mutex;
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::Sample;

use crate::config::{ZenohConfig, ZenohError};
use crate::history::{History, RecentIds};
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

/// What a subscription's buffer holds. Samples are decoded by the consumer, not in Zenoh's callback:
/// a local `put` runs the callback on the publisher's thread, and decoding there would serialise
/// publisher and consumer work on one core.
enum Item {
    Fresh(Sample),
    Again(Arc<BusMessage>, u32),
}

/// What the subscribers of one subscription (or one named group in this process) decode into.
struct Feed {
    /// Undeclared when the feed is dropped, i.e. when its last member goes.
    _subscribers: Vec<Subscriber<()>>,
    tx: flume::Sender<Item>,
    rx: flume::Receiver<Item>,
    missed: Arc<AtomicU64>,
    group: String,
    filter: Filter,
    stats: Arc<ZenohStats>,
    /// Set when the subscription replays history: what was already delivered.
    recent: Option<Mutex<RecentIds>>,
    /// Where samples that are not events are recorded.
    dead_letters: Arc<dyn DeadLetterSink>,
}

impl Feed {
    /// The next delivery or error; `None` once the feed is closed.
    async fn next_item(self: &Arc<Self>, listen_only: bool) -> Option<Result<Delivery, EventBusError>> {
        loop {
            let missed = self.missed.swap(0, Ordering::Relaxed);
            if missed > 0 {
                tracing::warn!(group = %self.group, missed, "zenoh subscriber lagged");
                return Some(Err(EventBusError::Lagged { group: self.group.clone(), missed }));
            }
            let (message, attempt) = match self.rx.recv_async().await.ok()? {
                Item::Again(message, attempt) => (message, attempt),
                Item::Fresh(sample) => match decode_sample(&sample, &self.filter) {
                    Ok(None) => continue,
                    Ok(Some(message)) if self.recent.as_ref().is_some_and(|r| !r.lock().first_time(message.event.event_id)) => continue,
                    Ok(Some(message)) => (message, 1),
                    Err(e) => {
                        self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "zenoh sample is not a composable-rust event");
                        self.dead_letters.record(DeadLetter::now(format!("zenoh sample on {}", sample.key_expr()), e.to_string(), 1, None));
                        return Some(Err(e));
                    }
                },
            };
            return Some(Ok(if listen_only {
                Delivery::listen_only(message)
            } else {
                Delivery::with_shared_ack(message, attempt, Arc::clone(self) as Arc<dyn SharedAck>)
            }));
        }
    }
}

impl SharedAck for Feed {
    fn ack(&self, _message: &Arc<BusMessage>) -> Result<(), EventBusError> {
        Ok(())
    }

    fn nack(&self, message: Arc<BusMessage>, attempt: u32) -> Result<(), EventBusError> {
        self.tx.try_send(Item::Again(message, attempt + 1)).map_err(|e| {
            // Keep flume's error, not the message it holds back.
            let cause = match e {
                flume::TrySendError::Full(_) => flume::TrySendError::Full(()),
                flume::TrySendError::Disconnected(_) => flume::TrySendError::Disconnected(()),
            };
            EventBusError::ack_failed(BusCause::context("cannot queue the redelivery (consume faster or raise subscriber_capacity)", cause))
        })
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
    let event = metadata::raw_decode(sample.attachment(), payload).map_err(|source| EventBusError::Decode { topic: key.to_owned(), source })?;
    Ok(Some(Arc::new(BusMessage { topic, event })))
}

/// The Zenoh event bus. Clones share the session.
///
/// See the [crate documentation](crate) for the key layout and what `subscribe` guarantees.
#[derive(Clone)]
pub struct ZenohEventBus {
    inner: Arc<Inner>,
}

/// A named group is one feed per group name and set of key expressions.
type GroupKey = (String, Vec<String>);

struct Inner {
    /// Declared before the session field so its queryables go first on drop.
    history: Option<History>,
    session: zenoh::Session,
    config: ZenohConfig,
    groups: Mutex<HashMap<GroupKey, Weak<Feed>>>,
    stats: Arc<ZenohStats>,
}

impl std::fmt::Debug for ZenohEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohEventBus").field("zid", &self.inner.session.zid()).field("mode", self.inner.config.mode()).finish_non_exhaustive()
    }
}

impl ZenohEventBus {
    /// An embedded bus: an in-process Zenoh session with no network activity (the same as
    /// `connect("zenoh:")`).
    pub async fn embedded() -> Result<Self, ZenohError> {
        Self::connect_with(ZenohConfig::embedded()).await
    }

    /// Opens the session a composable-rust Zenoh URL names (`zenoh:` embedded,
    /// `zenoh:peer?listen=ENDPOINT&connect=ENDPOINT`, see [`ZenohConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self, ZenohError> {
        Self::connect_with(ZenohConfig::from_url(url)?).await
    }

    /// Opens a session with `config`.
    pub async fn connect_with(config: ZenohConfig) -> Result<Self, ZenohError> {
        let zenoh_config = config.raw_zenoh_config()?;
        let session = zenoh::open(zenoh_config).await.map_err(|e| ZenohError::Open { reason: e.to_string() })?;
        tracing::debug!(zid = %session.zid(), mode = ?config.mode(), "zenoh session opened");
        Self::from_raw_session(session, config)
    }

    /// **Escape hatch**: wraps a session the caller opened (its settings are the caller's; `config`
    /// only supplies the bus's own settings: buffers, history, dead letters). Using it ties your code
    /// to the zenoh version this crate depends on; everything else in this crate's API is free of it.
    pub fn from_raw_session(session: zenoh::Session, config: ZenohConfig) -> Result<Self, ZenohError> {
        let history = match config.history() {
            0 => None,
            capacity => Some(History::serve(&session, capacity).map_err(|reason| ZenohError::Open { reason })?),
        };
        Ok(Self { inner: Arc::new(Inner { history, session, config, groups: Mutex::default(), stats: Arc::default() }) })
    }

    /// **Escape hatch**: the underlying Zenoh session (for raw access, or to declare queryables
    /// beside the bus). Using it ties your code to the zenoh version this crate depends on.
    pub fn raw_session(&self) -> &zenoh::Session {
        &self.inner.session
    }

    /// The settings in use.
    pub fn config(&self) -> &ZenohConfig {
        &self.inner.config
    }

    /// Where this bus records the samples it could not deliver (not composable-rust events):
    /// [`ZenohConfig::with_dead_letters`], a bounded in-memory record by default.
    pub fn dead_letter_sink(&self) -> &Arc<dyn DeadLetterSink> {
        self.inner.config.dead_letter_sink()
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

    fn put(&self, key: String, event: &SerializedEvent, attachment: ZBytes) -> Result<(), BusCause> {
        let payload = ZBytes::from(event.data.clone());
        if let Some(history) = &self.inner.history {
            history.retain(&key, &payload, &attachment);
        }
        self.inner
            .session
            .put(key, payload)
            .attachment(attachment)
            // Block, not Drop: a congested link slows the publisher down instead of discarding the
            // sample after `publish` already said Ok.
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(BusCause::from_boxed)
    }

    fn open_feed(&self, key_exprs: &[String], filter: &Filter, group: String) -> Result<Feed, BusCause> {
        let (tx, rx) = flume::bounded(self.inner.config.subscriber_capacity());
        let missed = Arc::new(AtomicU64::new(0));
        let mut subscribers = Vec::with_capacity(key_exprs.len());
        for key_expr in key_exprs {
            let (tx, missed, stats) = (tx.clone(), Arc::clone(&missed), Arc::clone(&self.inner.stats));
            let subscriber = self
                .inner
                .session
                .declare_subscriber(key_expr.as_str())
                // The callback runs on Zenoh's (or the local publisher's) thread and must never block it:
                // a full buffer is counted and reported as lag instead.
                .callback(move |sample| {
                    if let Err(flume::TrySendError::Full(_)) = tx.try_send(Item::Fresh(sample)) {
                        missed.fetch_add(1, Ordering::Relaxed);
                        stats.lagged.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .wait()
                .map_err(|e| BusCause::context(format!("cannot subscribe to key expression {key_expr:?}"), BusCause::from_boxed(e)))?;
            subscribers.push(subscriber);
        }
        let replay = self.inner.config.replay_history();
        if replay {
            // After the subscribers exist, so an event is either live, replayed, or both (de-duplicated).
            for key_expr in key_exprs {
                let (tx, missed) = (tx.clone(), Arc::clone(&missed));
                self.inner
                    .session
                    .get(key_expr.as_str())
                    .target(QueryTarget::All)
                    .consolidation(ConsolidationMode::None)
                    .callback(move |reply| {
                        if let Ok(sample) = reply.into_result()
                            && let Err(flume::TrySendError::Full(_)) = tx.try_send(Item::Fresh(sample))
                        {
                            missed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .wait()
                    .map_err(|e| BusCause::context(format!("cannot query the history of {key_expr:?}"), BusCause::from_boxed(e)))?;
            }
        }
        let recent = replay.then(|| Mutex::new(RecentIds::default()));
        let dead_letters = Arc::clone(self.inner.config.dead_letter_sink());
        Ok(Feed { _subscribers: subscribers, tx, rx, missed, group, filter: filter.clone(), stats: Arc::clone(&self.inner.stats), recent, dead_letters })
    }
}

/// Splits patterns into key expressions and a filter: all in the shared syntax, or all native.
fn key_exprs_for(topics: &[&str]) -> Result<(Vec<String>, Filter), EventBusError> {
    if topics.iter().any(|t| t.contains('/')) {
        if let Some(t) = topics.iter().find(|t| !t.contains('/')) {
            let reason = format!("{t:?} is a topic pattern among native key expressions: subscribe to each kind separately");
            return Err(EventBusError::subscribe_failed(topics, BusCause::msg(reason)));
        }
        for t in topics {
            zenoh::key_expr::KeyExpr::try_from(*t).map_err(|e| {
                EventBusError::subscribe_failed(topics, BusCause::context(format!("{t:?} is not a valid Zenoh key expression"), BusCause::from_boxed(e)))
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
    futures::stream::unfold(feed, move |feed| async move { feed.next_item(listen_only).await.map(|item| (item, feed)) }).boxed()
}

#[async_trait]
impl EventBus for ZenohEventBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let topic = Topic::new(topic)?;
        let span = tracing::debug_span!("zenoh.publish", topic = %topic, event_type = %event.event_type, event_id = %event.event_id);
        let _enter = span.enter();
        let attachment = metadata::raw_encode(event);
        let failed = |cause: BusCause| EventBusError::publish_failed(topic.as_str(), cause, true);
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
        let failed = |cause: BusCause| EventBusError::subscribe_failed(topics, cause);
        let _span = tracing::debug_span!("zenoh.subscribe", key_exprs = ?exprs, group = ?options.group).entered();
        match options.group {
            ConsumerGroup::Exclusive => {
                let feed = self.open_feed(&exprs, &filter, "exclusive".into()).map_err(failed)?;
                Ok(member_stream(Arc::new(feed), true))
            }
            ConsumerGroup::Named(name) => {
                let mut groups = self.inner.groups.lock();
                let key = (name.clone(), exprs.clone());
                if let Some(feed) = groups.get(&key).and_then(Weak::upgrade) {
                    return Ok(member_stream(feed, false));
                }
                let feed = Arc::new(self.open_feed(&exprs, &filter, name).map_err(failed)?);
                groups.retain(|_, weak| weak.strong_count() > 0);
                groups.insert(key, Arc::downgrade(&feed));
                Ok(member_stream(feed, false))
            }
        }
    }

    fn backend(&self) -> &'static str {
        "zenoh"
    }
}
