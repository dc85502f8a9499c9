//! [`NatsEventBus`]: publish with JetStream acks, subscribe through pull consumers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, AckKind, stream};
use async_trait::async_trait;
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{
    BusMessage, ConsumerGroup, Delivery, DeliveryAck, EventBus, EventBusError, EventStream, SerializedEvent, SubscribeOptions, Topic, TopicPattern,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::config::{NatsConfig, NatsError, Storage};
use crate::naming::{consumer_name, filter_subject, subject, topic_of};

/// Header names this bus sets on every message (besides `Nats-Msg-Id`).
pub mod headers {
    /// The event type, e.g. `OrderPlaced.v1`.
    pub const EVENT_TYPE: &str = "cr-event-type";
    /// The event id (also sent as `Nats-Msg-Id`).
    pub const EVENT_ID: &str = "cr-event-id";
    /// The correlation id, if any.
    pub const CORRELATION_ID: &str = "cr-correlation-id";
    /// The causation id, if any.
    pub const CAUSATION_ID: &str = "cr-causation-id";
}

/// A message terminated after too many deliveries or because it could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsDeadLetter {
    /// Subject it was on.
    pub subject: String,
    /// Why it was terminated.
    pub reason: String,
    /// Deliveries made.
    pub deliveries: i64,
}

/// The latest dead letters of one bus (at most `capacity`, older ones dropped) and how many there
/// were in all. Dead letters are rare and the lock is never held across an await: `std`'s mutex is
/// enough.
#[derive(Debug)]
struct DeadLetters {
    capacity: usize,
    letters: Mutex<VecDeque<NatsDeadLetter>>,
    total: AtomicU64,
}

impl DeadLetters {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), letters: Mutex::new(VecDeque::new()), total: AtomicU64::new(0) }
    }

    fn record(&self, letter: NatsDeadLetter) {
        self.total.fetch_add(1, Ordering::Relaxed);
        // A panic elsewhere while holding the lock leaves the queue consistent: keep using it.
        let mut letters = self.letters.lock().unwrap_or_else(PoisonError::into_inner);
        if letters.len() >= self.capacity {
            letters.pop_front();
        }
        letters.push_back(letter);
    }

    fn snapshot(&self) -> Vec<NatsDeadLetter> {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The NATS JetStream event bus. Clones share the connection.
#[derive(Clone)]
pub struct NatsEventBus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    dead_letters: Arc<DeadLetters>,
}

impl std::fmt::Debug for NatsEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEventBus").field("url", &self.config.url).field("stream", &self.config.stream_name).finish_non_exhaustive()
    }
}

impl NatsEventBus {
    /// Connects with default settings and creates (or validates) the stream.
    pub async fn connect(url: &str) -> Result<Self, NatsError> {
        Self::connect_with(NatsConfig::new(url)).await
    }

    /// Connects with `config` and creates (or validates) the stream.
    pub async fn connect_with(config: NatsConfig) -> Result<Self, NatsError> {
        if let Err(e) = config.url.parse::<async_nats::ServerAddr>() {
            return Err(NatsError::InvalidUrl { url: config.url.clone(), source: BusCause::new(e) });
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| NatsError::Unreachable { url: config.url.clone(), source: BusCause::new(e) })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let stream_err = |source: BusCause| NatsError::Stream { stream: config.stream_name.clone(), source };
        let wanted_subject = format!("{}.>", config.subject_prefix);
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream_name.clone(),
                subjects: vec![wanted_subject.clone()],
                storage: match config.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| stream_err(BusCause::new(e)))?;
        let info = stream.info().await.map_err(|e| stream_err(BusCause::new(e)))?;
        if !info.config.subjects.contains(&wanted_subject) {
            return Err(stream_err(BusCause::msg(format!("it exists with subjects {:?}, this bus needs {wanted_subject:?}", info.config.subjects))));
        }
        let dead_letters = Arc::new(DeadLetters::new(config.dead_letter_capacity));
        Ok(Self { client, js, config: Arc::new(config), dead_letters })
    }

    /// The latest messages terminated by this bus (too many deliveries, undecodable), oldest first:
    /// at most [`NatsConfig::dead_letter_capacity`]; older ones are dropped from memory but counted
    /// in [`NatsEventBus::dead_letters_total`].
    pub fn dead_letters(&self) -> Vec<NatsDeadLetter> {
        self.dead_letters.snapshot()
    }

    /// How many messages this bus terminated in all, including those no longer kept.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.total()
    }

    /// The underlying client (to flush, or for raw access).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The settings in use.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    async fn consumer_stream(&self, pattern: &TopicPattern, group: &ConsumerGroup) -> Result<pull::Stream, EventBusError> {
        let subscribe_failed = |cause: BusCause| EventBusError::subscribe_failed([pattern.as_str()], cause);
        let stream = self
            .js
            .get_stream(&self.config.stream_name)
            .await
            .map_err(|e| subscribe_failed(BusCause::context(format!("cannot look up JetStream stream {}", self.config.stream_name), e)))?;
        let mut config = pull::Config {
            filter_subject: filter_subject(&self.config.subject_prefix, pattern),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::New,
            ack_wait: self.config.ack_wait,
            // The bus terminates a message itself on its last delivery (recording why); the server
            // limit is one more, as a backstop.
            max_deliver: self.config.max_deliver + 1,
            ..Default::default()
        };
        let consumer = match group {
            ConsumerGroup::Named(name) => {
                let durable = consumer_name(name, pattern.as_str());
                config.durable_name = Some(durable.clone());
                stream.get_or_create_consumer(&durable, config).await.map_err(|e| BusCause::context(format!("cannot create durable consumer {durable}"), e))
            }
            ConsumerGroup::Exclusive => {
                config.inactive_threshold = std::time::Duration::from_secs(30);
                stream.create_consumer(config).await.map_err(|e| BusCause::context("cannot create an ephemeral consumer", e))
            }
        }
        .map_err(subscribe_failed)?;
        consumer
            .stream()
            .max_messages_per_batch(self.config.pull_batch)
            .expires(self.config.pull_expiry)
            .heartbeat(self.config.pull_expiry / 4)
            .messages()
            .await
            .map_err(|e| subscribe_failed(BusCause::context("cannot start pulling messages", e)))
    }

    fn to_delivery(&self, message: jetstream::Message, group: &str) -> Option<Result<Delivery, EventBusError>> {
        let deliveries = message.info().map_or(1, |i| i.delivered);
        let subject = message.subject.to_string();
        let topic = topic_of(&self.config.subject_prefix, &subject).and_then(|t| Topic::new(t).ok());
        let decoded = SerializedEvent::decode(&message.payload);
        match (topic, decoded) {
            (Some(topic), Ok(event)) => {
                let attempt = u32::try_from(deliveries).unwrap_or(u32::MAX);
                let ack = NatsAck { message, max_deliver: self.config.max_deliver, dead_letters: Arc::clone(&self.dead_letters), subject };
                Some(Ok(Delivery::with_ack(Arc::new(BusMessage { topic, event }), attempt, Box::new(ack))))
            }
            (_, Err(source)) => {
                tracing::warn!(subject = %subject, group, error = %source, "undecodable message terminated");
                self.record_dead(&subject, format!("undecodable: {source}"), deliveries);
                tokio::spawn(async move {
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(error = %e, "could not terminate an undecodable message");
                    }
                });
                Some(Err(EventBusError::Decode { topic: subject, source }))
            }
            (None, Ok(_)) => {
                tracing::warn!(subject = %subject, "message outside this bus's subject prefix ignored");
                None
            }
        }
    }

    fn record_dead(&self, subject: &str, reason: String, deliveries: i64) {
        self.dead_letters.record(NatsDeadLetter { subject: subject.to_string(), reason, deliveries });
    }
}

struct NatsAck {
    message: jetstream::Message,
    max_deliver: i64,
    dead_letters: Arc<DeadLetters>,
    subject: String,
}

impl DeliveryAck for NatsAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        async move { self.message.ack().await.map_err(|e| EventBusError::ack_failed(BusCause::from_boxed(e))) }.boxed()
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        async move {
            let deliveries = self.message.info().map_or(1, |i| i.delivered);
            let kind = if deliveries >= self.max_deliver {
                tracing::error!(subject = %self.subject, deliveries, "message failed on its last allowed delivery; terminated");
                self.dead_letters.record(NatsDeadLetter {
                    subject: self.subject.clone(),
                    reason: format!("not handled after {deliveries} deliveries"),
                    deliveries,
                });
                AckKind::Term
            } else {
                AckKind::Nak(None)
            };
            self.message.ack_with(kind).await.map_err(|e| EventBusError::ack_failed(BusCause::from_boxed(e)))
        }
        .boxed()
    }
}

#[async_trait]
impl EventBus for NatsEventBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        let topic = Topic::new(topic)?;
        let subject = subject(&self.config.subject_prefix, topic.as_str());
        let span = tracing::debug_span!("publish", bus = "nats", subject = %subject, event_type = %event.event_type);
        async {
            let payload = event.encode().map_err(|e| EventBusError::publish_failed(topic.as_str(), e, false))?;
            let mut headers = HeaderMap::new();
            let id = event.event_id.to_string();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(headers::EVENT_ID, id.as_str());
            headers.insert(headers::EVENT_TYPE, event.event_type.as_str());
            if let Some(c) = &event.metadata.correlation_id {
                headers.insert(headers::CORRELATION_ID, c.as_str());
            }
            if let Some(c) = &event.metadata.causation_id {
                headers.insert(headers::CAUSATION_ID, c.as_str());
            }
            let failed = |e: PublishError| {
                let retryable = !matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::StreamNotFound);
                EventBusError::publish_failed(topic.as_str(), e, retryable)
            };
            let ack = self.js.publish_with_headers(subject.clone(), headers, payload).await.map_err(failed)?;
            ack.await.map_err(failed)?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let patterns = parse_patterns(topics)?;
        let group_name = match &options.group {
            ConsumerGroup::Named(n) => n.clone(),
            ConsumerGroup::Exclusive => "exclusive".to_string(),
        };
        let mut streams = Vec::with_capacity(patterns.len());
        for pattern in &patterns {
            streams.push(self.consumer_stream(pattern, &options.group).await?);
        }
        let bus = self.clone();
        let merged = futures::stream::select_all(streams).filter_map(move |item| {
            let out = match item {
                Ok(message) => bus.to_delivery(message, &group_name),
                Err(e) => {
                    tracing::warn!(error = %e, "NATS consumer stream error");
                    Some(Err(EventBusError::unavailable(BusCause::context("the consumer stream failed", e))))
                }
            };
            futures::future::ready(out)
        });
        Ok(Box::pin(merged))
    }

    fn backend(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(n: usize) -> NatsDeadLetter {
        NatsDeadLetter { subject: format!("cr.t{n}"), reason: "undecodable".into(), deliveries: 1 }
    }

    #[test]
    fn dead_letters_keep_the_latest_and_count_all() {
        let dead = DeadLetters::new(3);
        for n in 0..10 {
            dead.record(letter(n));
        }
        let kept = dead.snapshot();
        assert_eq!(kept.len(), 3, "the record must stay bounded: {kept:?}");
        assert_eq!(kept, vec![letter(7), letter(8), letter(9)], "the oldest go first");
        assert_eq!(dead.total(), 10);
        assert_eq!(DeadLetters::new(0).capacity, 1, "a zero capacity still keeps the latest");
    }
}
