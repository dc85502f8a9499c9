//! [`RedpandaEventBus`]: keyed, acknowledged publishes; consumer-group subscriptions that commit
//! only what was handled.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{ConsumerGroup, EventBus, EventBusError, EventStream, SerializedEvent, SubscribeOptions, Topic, TopicPattern, event_headers};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tracing::Instrument;

use crate::config::{OffsetReset, RedpandaConfig, RedpandaError, TopicSpec};
use crate::consumer::{MemberConsumer, MemberContext, MemberState, member_stream};
use crate::dead_letters::{DeadLetter, DeadLetters};

/// Builder of a [`RedpandaEventBus`]; every setting has a default (see [`RedpandaConfig::new`]).
#[derive(Debug, Clone)]
pub struct RedpandaBuilder {
    config: RedpandaConfig,
}

impl RedpandaBuilder {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
    #[must_use]
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.config.brokers = brokers.into();
        self
    }
    /// Producer acknowledgements.
    #[must_use]
    pub fn acks(mut self, acks: crate::Acks) -> Self {
        self.config.acks = acks;
        self
    }
    /// Producer compression.
    #[must_use]
    pub fn compression(mut self, compression: crate::Compression) -> Self {
        self.config.compression = compression;
        self
    }
    /// Idempotent production (on by default).
    #[must_use]
    pub fn idempotent(mut self, on: bool) -> Self {
        self.config.idempotent = on;
        self
    }
    /// The consumer group of [`EventBus::subscribe`].
    #[must_use]
    pub fn consumer_group(mut self, group: impl Into<String>) -> Self {
        self.config.group_id = Some(group.into());
        self
    }
    /// Where a new consumer group starts.
    #[must_use]
    pub fn auto_offset_reset(mut self, reset: OffsetReset) -> Self {
        self.config.auto_offset_reset = reset;
        self
    }
    /// Messages the producer may buffer.
    #[must_use]
    pub fn buffer_size(mut self, messages: usize) -> Self {
        self.config.buffer_size = messages;
        self
    }
    /// Upper bound of one publish, retries included.
    #[must_use]
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.config.delivery_timeout = timeout;
        self
    }
    /// How long a silent group member keeps its partitions.
    #[must_use]
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_timeout = timeout;
        self
    }
    /// Upper bound of connecting, topic creation and start-offset lookups.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }
    /// Topic creation on first use; `None` expects topics to exist.
    #[must_use]
    pub fn auto_create_topics(mut self, spec: Option<TopicSpec>) -> Self {
        self.config.auto_create_topics = spec;
        self
    }
    /// A librdkafka property passed through to producer and consumers.
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.properties.insert(key.into(), value.into());
        self
    }
    /// The settings so far.
    pub fn config(&self) -> &RedpandaConfig {
        &self.config
    }
    /// Connects (checks that a broker answers).
    pub async fn build(self) -> Result<RedpandaEventBus, RedpandaError> {
        RedpandaEventBus::connect_with(self.config).await
    }
}

/// The Redpanda/Kafka event bus. Clones share the producer.
#[derive(Clone)]
pub struct RedpandaEventBus {
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    config: Arc<RedpandaConfig>,
    known_topics: Arc<Mutex<HashSet<String>>>,
    dead_letters: DeadLetters,
}

impl std::fmt::Debug for RedpandaEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedpandaEventBus").field("brokers", &self.config.brokers).finish_non_exhaustive()
    }
}

fn client_error(e: KafkaError) -> RedpandaError {
    RedpandaError::Client { source: BusCause::new(e) }
}

/// Kafka's own name rules, a subset of this project's topics: no more than 249 characters of
/// `[A-Za-z0-9._-]`, which every valid [`Topic`] already is.
fn topic_regex(pattern: &TopicPattern) -> String {
    const SEGMENT: &str = "[A-Za-z0-9_-]+";
    let parts: Vec<String> = pattern
        .as_str()
        .split('.')
        .map(|seg| match seg {
            "*" => SEGMENT.to_owned(),
            ">" => format!("{SEGMENT}(\\.{SEGMENT})*"),
            exact => exact.replace('-', "\\-"),
        })
        .collect();
    format!("^{}$", parts.join("\\."))
}

fn is_retryable(e: &KafkaError) -> bool {
    match e.rdkafka_error_code() {
        Some(code) => !matches!(
            code,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidConfig
        ),
        None => true,
    }
}

impl RedpandaEventBus {
    /// A builder with the defaults of [`RedpandaConfig::new`] and no brokers yet.
    pub fn builder() -> RedpandaBuilder {
        RedpandaBuilder { config: RedpandaConfig::new("") }
    }

    /// Connects to `brokers` with the default settings.
    pub async fn new(brokers: &str) -> Result<Self, RedpandaError> {
        Self::connect_with(RedpandaConfig::new(brokers)).await
    }

    /// Connects with `config`: creates the producer and admin client and checks that a broker answers.
    pub async fn connect_with(config: RedpandaConfig) -> Result<Self, RedpandaError> {
        config.validate()?;
        let producer: FutureProducer = config.producer_config().create().map_err(client_error)?;
        let admin: AdminClient<DefaultClientContext> = config.producer_config().create().map_err(client_error)?;
        let probe = producer.clone();
        let timeout = config.request_timeout;
        let metadata = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout).map(|m| m.brokers().len()))
            .await
            .map_err(|e| RedpandaError::Unreachable { brokers: config.brokers.clone(), source: BusCause::new(e) })?;
        let brokers = metadata.map_err(|e| RedpandaError::Unreachable { brokers: config.brokers.clone(), source: BusCause::new(e) })?;
        tracing::debug!(bootstrap = %config.brokers, brokers, "connected to kafka");
        let dead_letters = DeadLetters::new(config.dead_letter_capacity);
        Ok(Self { producer, admin: Arc::new(admin), config: Arc::new(config), known_topics: Arc::default(), dead_letters })
    }

    /// The settings in use.
    pub fn config(&self) -> &RedpandaConfig {
        &self.config
    }

    /// The latest messages acknowledged past without delivery (undecodable), oldest first: at most
    /// [`RedpandaConfig::dead_letter_capacity`]; older ones are dropped from memory but counted in
    /// [`RedpandaEventBus::dead_letters_total`].
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.snapshot()
    }

    /// How many messages this bus dead-lettered in all, including those no longer kept.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.total()
    }

    /// The underlying producer (for raw access).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Creates `topic` with `partitions` and `replication` unless it exists.
    pub async fn create_topic(&self, topic: &str, partitions: i32, replication: i32) -> Result<(), RedpandaError> {
        let err = |source: BusCause| RedpandaError::CreateTopic { topic: topic.to_owned(), source };
        Topic::new(topic).map_err(|e| err(BusCause::new(e)))?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new()
            .operation_timeout(Some(Timeout::After(self.config.request_timeout)))
            .request_timeout(Some(Timeout::After(self.config.request_timeout)));
        let results = self.admin.create_topics([&new], &options).await.map_err(|e| err(BusCause::new(e)))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(err(BusCause::new(code))),
            }
        }
        self.known_topics.lock().insert(topic.to_owned());
        Ok(())
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), EventBusError> {
        let Some(spec) = self.config.auto_create_topics else { return Ok(()) };
        if self.known_topics.lock().contains(topic) {
            return Ok(());
        }
        self.create_topic(topic, spec.partitions, spec.replication).await.map_err(EventBusError::unavailable)
    }

    fn member(&self, group: &str, reset: OffsetReset) -> Result<(Arc<MemberConsumer>, Arc<MemberState>), BusCause> {
        let state = Arc::new(MemberState::new(group.to_owned()));
        let consumer: MemberConsumer = self
            .config
            .consumer_config(group, reset)
            .create_with_context(MemberContext { state: Arc::clone(&state) })
            .map_err(|e| BusCause::context(format!("cannot create a consumer in group {group}"), e))?;
        Ok((Arc::new(consumer), state))
    }

    /// Starts a fresh exclusive group at the current end of every existing matching partition, so it
    /// receives exactly what is published after `subscribe` returns (topics created later are read
    /// from their start).
    async fn start_at_end(consumer: &Arc<MemberConsumer>, patterns: &[TopicPattern], timeout: Duration) -> Result<(), BusCause> {
        let consumer = Arc::clone(consumer);
        let patterns = patterns.to_vec();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| BusCause::context("cannot fetch the topics to start at their end", e))?;
            let mut tpl = TopicPartitionList::new();
            for topic in metadata.topics() {
                if !patterns.iter().any(|p| p.matches(topic.name())) {
                    continue;
                }
                for partition in topic.partitions() {
                    let (_, high) = consumer
                        .fetch_watermarks(topic.name(), partition.id(), timeout)
                        .map_err(|e| BusCause::context(format!("cannot fetch the end offset of {}/{}", topic.name(), partition.id()), e))?;
                    tpl.add_partition_offset(topic.name(), partition.id(), Offset::Offset(high)).map_err(BusCause::new)?;
                }
            }
            if tpl.count() > 0 {
                consumer.commit(&tpl, CommitMode::Sync).map_err(|e| BusCause::context("cannot set the start offsets", e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| BusCause::context("the start-offset lookup did not finish", e))?
    }
}

#[async_trait]
impl EventBus for RedpandaEventBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let topic = Topic::new(topic)?;
        let span = tracing::debug_span!("kafka.publish", topic = %topic, event_type = %event.event_type, event_id = %event.event_id);
        async {
            self.ensure_topic(topic.as_str()).await?;
            let mut headers = OwnedHeaders::new_with_capacity(8);
            for (key, value) in event_headers::to_headers(event) {
                headers = headers.insert(Header { key: &key, value: Some(value.as_bytes()) });
            }
            // Keyed by stream (aggregate) id: all events of one aggregate land in one partition, in
            // order. Events with no stream share the topic's key, so they keep their order too.
            let key = event.stream_id.as_ref().map_or(topic.as_str(), composable_rust_core::StreamId::as_str);
            let record = FutureRecord::to(topic.as_str()).key(key).payload(&event.data[..]).headers(headers);
            match self.producer.send(record, Timeout::After(self.config.delivery_timeout)).await {
                Ok(_) => Ok(()),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "kafka publish failed");
                    let retryable = is_retryable(&e);
                    Err(EventBusError::publish_failed(topic.as_str(), e, retryable))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn subscribe(&self, topics: &[&str]) -> Result<EventStream, EventBusError> {
        let options = self.config.group_id.as_ref().map_or_else(|| SubscribeOptions::for_topics(topics), SubscribeOptions::group);
        self.subscribe_with(topics, options).await
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let patterns = parse_patterns(topics)?;
        let failed = |cause: BusCause| EventBusError::subscribe_failed(topics, cause);
        let span = tracing::debug_span!("kafka.subscribe", ?topics, group = ?options.group);
        async {
            for p in patterns.iter().filter(|p| p.is_exact()) {
                self.ensure_topic(p.as_str()).await?;
            }
            let (group, exclusive) = match &options.group {
                ConsumerGroup::Named(name) => (name.clone(), false),
                ConsumerGroup::Exclusive => (format!("composable-rust-exclusive-{}", uuid::Uuid::new_v4().simple()), true),
            };
            let reset = if exclusive { OffsetReset::Earliest } else { self.config.auto_offset_reset };
            let (consumer, state) = self.member(&group, reset).map_err(failed)?;
            if exclusive {
                Self::start_at_end(&consumer, &patterns, self.config.request_timeout).await.map_err(failed)?;
            }
            let subscriptions: Vec<String> = patterns.iter().map(|p| if p.is_exact() { p.as_str().to_owned() } else { topic_regex(p) }).collect();
            let refs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
            consumer.subscribe(&refs).map_err(|e| failed(BusCause::context(format!("cannot subscribe to {subscriptions:?}"), e)))?;
            tracing::debug!(%group, ?subscriptions, "kafka consumer subscribed");
            Ok(member_stream(consumer, state, self.dead_letters.clone()))
        }
        .instrument(span)
        .await
    }

    fn backend(&self) -> &'static str {
        "redpanda"
    }
}

impl Drop for RedpandaEventBus {
    fn drop(&mut self) {
        // The last handle flushes what the producer still buffers (publishes already returned Ok only
        // after delivery, so this only matters for raw producer use).
        if Arc::strong_count(&self.config) == 1 {
            let _ = self.producer.flush(Timeout::After(Duration::from_secs(5)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_anchored_regexes() {
        let re = |p: &str| topic_regex(&TopicPattern::new(p).unwrap());
        assert_eq!(re("shop.*.events"), "^shop\\.[A-Za-z0-9_-]+\\.events$");
        assert_eq!(re("shop.>"), "^shop\\.[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$");
        assert_eq!(re("a-b.*"), "^a\\-b\\.[A-Za-z0-9_-]+$");
    }
}
