//! [`RedpandaEventBus`]: keyed, acknowledged publishes; consumer-group subscriptions that commit
//! only what was handled.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::dead_letter::DeadLetterSink;
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

use crate::config::{OffsetReset, RedpandaConfig, RedpandaError};
use crate::consumer::{MemberConsumer, MemberContext, MemberState, member_stream};

/// The Redpanda/Kafka event bus. Clones share the producer.
#[derive(Clone)]
pub struct RedpandaEventBus {
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    config: Arc<RedpandaConfig>,
    known_topics: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for RedpandaEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedpandaEventBus").field("brokers", &self.config.brokers()).finish_non_exhaustive()
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
    /// Connects to the brokers a composable-rust Kafka URL names
    /// (`redpanda://HOST:PORT[,HOST:PORT...][?KEY=VALUE&...]` or `kafka://...`, see
    /// [`RedpandaConfig::from_url`]) with default settings.
    pub async fn connect(url: &str) -> Result<Self, RedpandaError> {
        Self::connect_with(RedpandaConfig::from_url(url)?).await
    }

    /// Connects with `config`: creates the producer and admin client and checks that a broker answers.
    pub async fn connect_with(config: RedpandaConfig) -> Result<Self, RedpandaError> {
        config.validate()?;
        let producer: FutureProducer = config.raw_producer_config().create().map_err(client_error)?;
        let admin: AdminClient<DefaultClientContext> = config.raw_producer_config().create().map_err(client_error)?;
        let probe = producer.clone();
        let timeout = config.request_timeout();
        let unreachable = |source: BusCause| RedpandaError::Unreachable { brokers: config.brokers().to_owned(), source };
        let metadata = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout).map(|m| m.brokers().len()))
            .await
            .map_err(|e| unreachable(BusCause::new(e)))?;
        let brokers = metadata.map_err(|e| unreachable(BusCause::new(e)))?;
        tracing::debug!(bootstrap = %config.brokers(), brokers, "connected to kafka");
        Ok(Self { producer, admin: Arc::new(admin), config: Arc::new(config), known_topics: Arc::default() })
    }

    /// The settings in use.
    pub fn config(&self) -> &RedpandaConfig {
        &self.config
    }

    /// Where this bus records the messages it acknowledged past without delivering them
    /// (undecodable): [`RedpandaConfig::with_dead_letters`], a bounded in-memory record by default.
    pub fn dead_letter_sink(&self) -> &Arc<dyn DeadLetterSink> {
        self.config.dead_letter_sink()
    }

    /// **Escape hatch**: the underlying rdkafka producer (for raw access). Using it ties your code to
    /// the rdkafka version this crate depends on; everything else in this crate's API is free of it.
    pub fn raw_producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Creates `topic` with `partitions` and `replication` unless it exists.
    pub async fn create_topic(&self, topic: &str, partitions: i32, replication: i32) -> Result<(), RedpandaError> {
        let err = |source: BusCause| RedpandaError::CreateTopic { topic: topic.to_owned(), source };
        Topic::new(topic).map_err(|e| err(BusCause::new(e)))?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new()
            .operation_timeout(Some(Timeout::After(self.config.request_timeout())))
            .request_timeout(Some(Timeout::After(self.config.request_timeout())));
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
        let Some(spec) = self.config.auto_create_topics() else { return Ok(()) };
        if self.known_topics.lock().contains(topic) {
            return Ok(());
        }
        self.create_topic(topic, spec.partitions, spec.replication).await.map_err(EventBusError::unavailable)
    }

    fn member(&self, group: &str, reset: OffsetReset) -> Result<(Arc<MemberConsumer>, Arc<MemberState>), BusCause> {
        let state = Arc::new(MemberState::new(group.to_owned()));
        let consumer: MemberConsumer = self
            .config
            .raw_consumer_config(group, reset)
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
            match self.producer.send(record, Timeout::After(self.config.delivery_timeout())).await {
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
        let options = self.config.consumer_group().map_or_else(|| SubscribeOptions::for_topics(topics), SubscribeOptions::group);
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
            let reset = if exclusive { OffsetReset::Earliest } else { self.config.auto_offset_reset() };
            let (consumer, state) = self.member(&group, reset).map_err(failed)?;
            if exclusive {
                Self::start_at_end(&consumer, &patterns, self.config.request_timeout()).await.map_err(failed)?;
            }
            let subscriptions: Vec<String> = patterns.iter().map(|p| if p.is_exact() { p.as_str().to_owned() } else { topic_regex(p) }).collect();
            let refs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
            consumer.subscribe(&refs).map_err(|e| failed(BusCause::context(format!("cannot subscribe to {subscriptions:?}"), e)))?;
            tracing::debug!(%group, ?subscriptions, "kafka consumer subscribed");
            Ok(member_stream(consumer, state, Arc::clone(self.config.dead_letter_sink())))
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
