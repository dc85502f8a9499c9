//! Settings of the Redpanda/Kafka bus and the errors of setting it up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::dead_letter::{DeadLetterSink, InMemoryDeadLetters};
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::url::{UrlError, UrlReader, split_query};

/// Errors creating the bus or its topics. Where librdkafka failed, its error is the source. New
/// variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedpandaError {
    /// The URL is not a Redpanda/Kafka URL.
    #[error("invalid Redpanda/Kafka URL: {0}")]
    InvalidUrl(#[source] UrlError),
    /// The broker list is empty or malformed.
    #[error("invalid broker list {brokers:?}: {reason} (expected HOST:PORT[,HOST:PORT...])")]
    InvalidBrokers {
        /// What was given.
        brokers: String,
        /// Why it was refused.
        reason: String,
    },
    /// librdkafka refused a client property.
    #[error("invalid Kafka client configuration: {source}")]
    Client {
        /// librdkafka's error, or what is wrong with the settings.
        #[source]
        source: BusCause,
    },
    /// No broker answered a metadata request.
    #[error("no Kafka broker reachable at {brokers}: {source}; check that Redpanda/Kafka is running and the address is right")]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// The client's error.
        #[source]
        source: BusCause,
    },
    /// Creating a topic failed.
    #[error("cannot create topic {topic}: {source}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The client's or broker's error.
        #[source]
        source: BusCause,
    },
}

impl From<UrlError> for RedpandaError {
    fn from(e: UrlError) -> Self {
        RedpandaError::InvalidUrl(e)
    }
}

/// Which replicas must have a message before the broker acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Every in-sync replica (required by idempotent production).
    All,
    /// The partition leader only.
    Leader,
    /// No acknowledgement: a publish can be lost without an error. Not allowed with idempotence.
    None,
}

impl Acks {
    fn as_kafka(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// Producer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// LZ4.
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    fn as_kafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// From the oldest retained message (nothing published before the group existed is missed).
    Earliest,
    /// From messages produced after the group's partitions were assigned.
    Latest,
}

/// How topics are created when the bus first uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Partitions (the unit of parallelism of a consumer group).
    pub partitions: i32,
    /// Replicas of each partition.
    pub replication: i32,
}

/// Settings of a [`RedpandaEventBus`](crate::RedpandaEventBus): [`RedpandaConfig::new`] or
/// [`RedpandaConfig::from_url`], then the `with_*` setters; every setting has a default.
///
/// ```
/// use composable_rust_redpanda::{Compression, RedpandaConfig};
///
/// let config = RedpandaConfig::from_url("redpanda://127.0.0.1:9092?linger.ms=5")?.with_compression(Compression::Lz4).with_consumer_group("billing");
/// assert_eq!(config.brokers(), "127.0.0.1:9092");
/// assert_eq!(config.properties().get("linger.ms").map(String::as_str), Some("5"));
/// # Ok::<(), composable_rust_redpanda::RedpandaError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedpandaConfig {
    brokers: String,
    acks: Acks,
    compression: Compression,
    idempotent: bool,
    group_id: Option<String>,
    auto_offset_reset: OffsetReset,
    buffer_size: usize,
    delivery_timeout: Duration,
    session_timeout: Duration,
    commit_interval: Duration,
    metadata_refresh: Duration,
    request_timeout: Duration,
    auto_create_topics: Option<TopicSpec>,
    properties: BTreeMap<String, String>,
    dead_letters: Arc<dyn DeadLetterSink>,
}

impl std::fmt::Debug for RedpandaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Property values that are secrets (SASL passwords...) are not printed.
        let properties: BTreeMap<&str, &str> =
            self.properties.iter().map(|(k, v)| (k.as_str(), if composable_rust_core::url::is_secret(k) { "***" } else { v.as_str() })).collect();
        f.debug_struct("RedpandaConfig")
            .field("brokers", &self.brokers)
            .field("acks", &self.acks)
            .field("compression", &self.compression)
            .field("idempotent", &self.idempotent)
            .field("group_id", &self.group_id)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("buffer_size", &self.buffer_size)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("metadata_refresh", &self.metadata_refresh)
            .field("request_timeout", &self.request_timeout)
            .field("auto_create_topics", &self.auto_create_topics)
            .field("properties", &properties)
            .finish_non_exhaustive()
    }
}

/// The reason a broker list is refused, and the offending broker (the whole list when it is empty).
fn check_brokers(brokers: &str) -> Result<(), (String, &'static str)> {
    if brokers.trim().is_empty() {
        return Err((brokers.to_owned(), "it is empty"));
    }
    for broker in brokers.split(',') {
        let broker = broker.trim();
        if broker.is_empty() {
            return Err((brokers.to_owned(), "an empty broker in the list"));
        }
        let (host, port) = broker.rsplit_once(':').ok_or_else(|| (broker.to_owned(), "a broker has no :PORT"))?;
        if host.is_empty() {
            return Err((broker.to_owned(), "the host is empty: expected HOST:PORT"));
        }
        if host.contains('/') {
            return Err((broker.to_owned(), "a host looks like a URL (give HOST:PORT, no scheme)"));
        }
        port.parse::<u16>().map_err(|_| (broker.to_owned(), "a port is not a number between 0 and 65535"))?;
    }
    Ok(())
}

impl RedpandaConfig {
    /// Defaults for `brokers` (`HOST:PORT[,HOST:PORT...]`): `acks=all`, idempotent, no compression,
    /// groups derived from the topics and starting at the earliest message, topics created on first
    /// use (3 partitions, replication 1), dead letters kept by a new bounded [`InMemoryDeadLetters`].
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            acks: Acks::All,
            compression: Compression::None,
            idempotent: true,
            group_id: None,
            auto_offset_reset: OffsetReset::Earliest,
            buffer_size: 100_000,
            delivery_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(500),
            metadata_refresh: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            auto_create_topics: Some(TopicSpec { partitions: 3, replication: 1 }),
            properties: BTreeMap::new(),
            dead_letters: Arc::new(InMemoryDeadLetters::default()),
        }
    }

    /// Defaults for a composable-rust Kafka URL, `redpanda://HOST:PORT[,HOST:PORT...][?KEY=VALUE&...]`
    /// (or `kafka://...`): the brokers, and each query pair a librdkafka property
    /// ([`with_property`](Self::with_property); values may be percent-encoded). The URL the
    /// `composable-rust` facade's `bus::connect` takes for Redpanda and Kafka.
    pub fn from_url(url: &str) -> Result<Self, RedpandaError> {
        let url = url.trim();
        let r = UrlReader::new(url);
        let (scheme, rest) = r.scheme(&["redpanda", "kafka"])?;
        let rest = r.authority(rest, &format!("{scheme}://HOST:PORT[,HOST:PORT...], e.g. {scheme}://127.0.0.1:9092"))?;
        let (brokers, query) = split_query(rest);
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty() {
            return Err(r.error(brokers, format!("no broker: expected {scheme}://HOST:PORT[,HOST:PORT...]")).into());
        }
        check_brokers(brokers).map_err(|(part, reason)| r.error(&part, reason))?;
        let properties = r.pairs(query, &[])?;
        Ok(properties.into_iter().fold(Self::new(brokers), |config, (key, value)| config.with_property(key, value)))
    }

    /// Checks the broker list's shape and that the settings go together.
    pub(crate) fn validate(&self) -> Result<(), RedpandaError> {
        check_brokers(&self.brokers).map_err(|(_, reason)| RedpandaError::InvalidBrokers { brokers: self.brokers.clone(), reason: reason.into() })?;
        if self.idempotent && self.acks != Acks::All {
            return Err(RedpandaError::Client {
                source: BusCause::msg("idempotent production needs acks=all: set with_acks(Acks::All) or with_idempotent(false)"),
            });
        }
        Ok(())
    }

    /// The bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Producer acknowledgements (default [`Acks::All`]).
    pub fn acks(&self) -> Acks {
        self.acks
    }

    /// Sets the producer acknowledgements.
    #[must_use]
    pub fn with_acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Producer compression (default none).
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Sets the producer compression.
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Whether production is idempotent (default on): broker-side de-duplication of producer
    /// retries, so a retried send never writes a message twice or out of order.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// Turns idempotent production on or off.
    #[must_use]
    pub fn with_idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    /// The group [`EventBus::subscribe`](composable_rust_core::EventBus::subscribe) uses; `None`
    /// (default) derives it from the topics
    /// ([`default_group_name`](composable_rust_core::event_bus::default_group_name)).
    pub fn consumer_group(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    /// Sets the group of [`EventBus::subscribe`](composable_rust_core::EventBus::subscribe).
    #[must_use]
    pub fn with_consumer_group(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// Where a new consumer group starts (default [`OffsetReset::Earliest`]).
    pub fn auto_offset_reset(&self) -> OffsetReset {
        self.auto_offset_reset
    }

    /// Sets where a new consumer group starts.
    #[must_use]
    pub fn with_auto_offset_reset(mut self, reset: OffsetReset) -> Self {
        self.auto_offset_reset = reset;
        self
    }

    /// Messages the producer may buffer before `publish` waits (`queue.buffering.max.messages`).
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Sets the messages the producer may buffer.
    #[must_use]
    pub fn with_buffer_size(mut self, messages: usize) -> Self {
        self.buffer_size = messages;
        self
    }

    /// How long a publish may take, retries included, before it fails (`message.timeout.ms`).
    pub fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }

    /// Sets the upper bound of one publish, retries included.
    #[must_use]
    pub fn with_delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// How long a group member may be silent before the broker hands its partitions to others.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    /// Sets how long a silent group member keeps its partitions.
    #[must_use]
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How often acknowledged offsets are committed (they are also committed on rebalance and close).
    pub fn commit_interval(&self) -> Duration {
        self.commit_interval
    }

    /// Sets how often acknowledged offsets are committed.
    #[must_use]
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// How often pattern subscriptions look for new matching topics.
    pub fn metadata_refresh(&self) -> Duration {
        self.metadata_refresh
    }

    /// Sets how often pattern subscriptions look for new matching topics.
    #[must_use]
    pub fn with_metadata_refresh(mut self, interval: Duration) -> Self {
        self.metadata_refresh = interval;
        self
    }

    /// How long connecting, topic creation and start-offset lookups may take before they fail.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sets the upper bound of connecting, topic creation and start-offset lookups.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How topics are created on first use; `None` expects them to exist.
    pub fn auto_create_topics(&self) -> Option<TopicSpec> {
        self.auto_create_topics
    }

    /// Sets topic creation on first use; `None` expects topics to exist.
    #[must_use]
    pub fn with_auto_create_topics(mut self, spec: Option<TopicSpec>) -> Self {
        self.auto_create_topics = spec;
        self
    }

    /// Further librdkafka properties, applied last to producer and consumers.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// Adds (or replaces) a librdkafka property passed to producer and consumers, applied after the
    /// bus's own settings (security settings, `batch.num.messages`, ...).
    #[must_use]
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Where the bus records the messages it acknowledges past without delivering them.
    pub fn dead_letter_sink(&self) -> &Arc<dyn DeadLetterSink> {
        &self.dead_letters
    }

    /// Records the messages the bus acknowledges past (not composable-rust events) in `sink`: give it
    /// the runtime's sink (`Executor::builder().dead_letters(..)`) to keep one record.
    #[must_use]
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = sink;
        self
    }

    /// **Escape hatch**: the librdkafka settings of this bus's producer, for a raw client that must
    /// behave the same (benchmarks, tools). Using it ties your code to the rdkafka version this crate
    /// depends on; everything else in this crate's API is free of it.
    pub fn raw_producer_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("acks", self.acks.as_kafka())
            .set("compression.type", self.compression.as_kafka())
            .set("enable.idempotence", if self.idempotent { "true" } else { "false" })
            .set("queue.buffering.max.messages", self.buffer_size.to_string())
            .set("message.timeout.ms", self.delivery_timeout.as_millis().to_string())
            .set("linger.ms", "1");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// **Escape hatch**: the librdkafka settings of this bus's consumers in `group`, as
    /// [`raw_producer_config`](Self::raw_producer_config) for the producer.
    pub fn raw_consumer_config(&self, group: &str, reset: OffsetReset) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            // Commit-after-handle: the bus stores an offset only once every message before it in the
            // partition was acknowledged; librdkafka commits what is stored, periodically and on
            // rebalance and close.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", self.commit_interval.as_millis().to_string())
            .set("auto.offset.reset", if reset == OffsetReset::Earliest { "earliest" } else { "latest" })
            .set("session.timeout.ms", self.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.session_timeout.as_millis() / 5).max(100).to_string())
            .set("topic.metadata.refresh.interval.ms", self.metadata_refresh.as_millis().to_string())
            .set("enable.partition.eof", "false");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_lists_are_checked() {
        for bad in ["", "localhost", "kafka://h:9092", ":9092", "h:port", "h:1,"] {
            assert!(matches!(RedpandaConfig::new(bad).validate(), Err(RedpandaError::InvalidBrokers { .. })), "{bad:?}");
        }
        RedpandaConfig::new("127.0.0.1:9092, redpanda:29092").validate().unwrap();
        let c = RedpandaConfig::new("h:1").with_acks(Acks::Leader);
        assert!(matches!(c.validate(), Err(RedpandaError::Client { .. })));
    }

    #[test]
    fn consumers_never_store_offsets_on_their_own() {
        let c = RedpandaConfig::new("h:1").raw_consumer_config("g", OffsetReset::Earliest);
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    fn refused(url: &str) -> UrlError {
        match RedpandaConfig::from_url(url) {
            Err(RedpandaError::InvalidUrl(e)) => e,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn urls_give_brokers_and_properties() {
        let c = RedpandaConfig::from_url("redpanda://a:1,b:2?batch.num.messages=1&acks=all").unwrap();
        assert_eq!(c.brokers(), "a:1,b:2");
        let properties: Vec<(&str, &str)> = c.properties().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(properties, [("acks", "all"), ("batch.num.messages", "1")]);
        assert_eq!(RedpandaConfig::from_url("KAFKA://a:1/").unwrap().brokers(), "a:1", "kafka:// is redpanda://");
        assert_eq!(RedpandaConfig::from_url("kafka://h:1?sasl.password=a%26b").unwrap().properties()["sasl.password"], "a&b");
        assert!(!format!("{:?}", RedpandaConfig::from_url("kafka://h:1?sasl.password=a%26b").unwrap()).contains("a&b"), "secrets are not printed");
    }

    #[test]
    fn malformed_urls_point_at_the_bad_part() {
        assert_eq!(refused("redpanda://h:1?batch.num.messages").part, "batch.num.messages");
        assert!(refused("redpanda://h:1?batch.num.messages").reason.contains("KEY=VALUE"));
        assert_eq!(refused("redpanda://h:1?=1").part, "=1");
        assert_eq!(refused("kafka://").reason, "no broker: expected kafka://HOST:PORT[,HOST:PORT...]");
        assert_eq!(refused("kafka://:9092").part, ":9092");
        assert!(refused("kafka://:9092").reason.contains("host is empty"));
        assert_eq!(refused("kafka://h:1,,h:2").part, "h:1,,h:2");
        assert_eq!(refused("kafka:h:1").part, "kafka:h:1");
        assert_eq!((refused("kafka://localhost").part.as_str(), refused("kafka://localhost").reason.as_str()), ("localhost", "a broker has no :PORT"));
        assert_eq!(refused("redpanda://h:1?sasl.password").part, "sasl.password");
        assert_eq!(refused("redpanda://h:1?sasl.password=%zz").part, "sasl.password=***", "a secret stays hidden");
        assert_eq!(refused("nats://h:1").part, "nats");
    }
}
