//! Settings of the Redpanda/Kafka bus and the errors of setting it up.

use std::collections::BTreeMap;
use std::time::Duration;

use composable_rust_core::event_bus::BusCause;

/// Errors creating the bus or its topics. Where librdkafka failed, its error is the source.
#[derive(Debug, thiserror::Error)]
pub enum RedpandaError {
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

/// Settings of a [`RedpandaEventBus`](crate::RedpandaEventBus); build with
/// [`RedpandaEventBus::builder`](crate::RedpandaEventBus::builder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedpandaConfig {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
    pub brokers: String,
    /// Producer acknowledgements (default [`Acks::All`]).
    pub acks: Acks,
    /// Producer compression (default none).
    pub compression: Compression,
    /// Idempotent production (default on): broker-side de-duplication of producer retries, so a
    /// retried send never writes a message twice or out of order.
    pub idempotent: bool,
    /// The group [`EventBus::subscribe`](composable_rust_core::EventBus::subscribe) uses; `None`
    /// (default) derives it from the topics
    /// ([`default_group_name`](composable_rust_core::event_bus::default_group_name)).
    pub group_id: Option<String>,
    /// Start of a new consumer group (default [`OffsetReset::Earliest`]).
    pub auto_offset_reset: OffsetReset,
    /// Messages the producer may buffer before `publish` waits (`queue.buffering.max.messages`).
    pub buffer_size: usize,
    /// How long a publish may take, retries included, before it fails (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long a group member may be silent before the broker hands its partitions to others.
    pub session_timeout: Duration,
    /// How often acknowledged offsets are committed (they are also committed on rebalance and close).
    pub commit_interval: Duration,
    /// How often pattern subscriptions look for new matching topics.
    pub metadata_refresh: Duration,
    /// How long connecting, topic creation and start-offset lookups may take before they fail.
    pub request_timeout: Duration,
    /// Create topics on first use (default: 3 partitions, replication 1); `None` expects them to exist.
    pub auto_create_topics: Option<TopicSpec>,
    /// Further librdkafka properties, applied last to producer and consumers (e.g. security settings).
    pub properties: BTreeMap<String, String>,
    /// Dead letters the bus keeps in memory ([`RedpandaEventBus::dead_letters`](crate::RedpandaEventBus::dead_letters));
    /// older ones are dropped and only counted (default 1,000).
    pub dead_letter_capacity: usize,
}

impl RedpandaConfig {
    /// Defaults for `brokers`.
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
            dead_letter_capacity: 1_000,
        }
    }

    /// Checks the broker list's shape.
    pub(crate) fn validate(&self) -> Result<(), RedpandaError> {
        let invalid = |reason: &str| RedpandaError::InvalidBrokers { brokers: self.brokers.clone(), reason: reason.into() };
        if self.brokers.trim().is_empty() {
            return Err(invalid("it is empty"));
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let (host, port) = broker.rsplit_once(':').ok_or_else(|| invalid("a broker has no :PORT"))?;
            if host.is_empty() || host.contains('/') {
                return Err(invalid("a host is empty or looks like a URL (give HOST:PORT, no scheme)"));
            }
            port.parse::<u16>().map_err(|_| invalid("a port is not a number between 0 and 65535"))?;
        }
        if self.idempotent && self.acks != Acks::All {
            return Err(RedpandaError::Client { source: BusCause::msg("idempotent production needs acks=all: set acks(Acks::All) or idempotent(false)") });
        }
        Ok(())
    }

    /// The librdkafka settings of this bus's producer: for a raw client that must behave the same
    /// (benchmarks, tools).
    pub fn producer_config(&self) -> rdkafka::ClientConfig {
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

    /// The librdkafka settings of this bus's consumers in `group`.
    pub fn consumer_config(&self, group: &str, reset: OffsetReset) -> rdkafka::ClientConfig {
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
        let mut c = RedpandaConfig::new("h:1");
        c.acks = Acks::Leader;
        assert!(matches!(c.validate(), Err(RedpandaError::Client { .. })));
    }

    #[test]
    fn consumers_never_store_offsets_on_their_own() {
        let c = RedpandaConfig::new("h:1").consumer_config("g", OffsetReset::Earliest);
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }
}
