//! [`NatsEventBus`]: publish with JetStream acks, subscribe through pull consumers.

use std::sync::Arc;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, AckKind, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use composable_rust_core::dead_letter::{DeadLetter, DeadLetterSink};
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::topic::parse_patterns;
use composable_rust_core::{
    BusMessage, ConsumerGroup, Delivery, DeliveryAck, EventBus, EventBusError, EventStream, SerializedEvent, SubscribeOptions, Topic, TopicPattern,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use composable_rust_core::url::{UrlError, redact};

use crate::config::{NatsConfig, NatsError, Storage};
use crate::naming::{consumer_name, filter_subject, subject, topic_of};

/// Header names this bus sets on every message (besides `Nats-Msg-Id`).
///
/// Besides these, each free-form header of the event's metadata (`EventMetadata::headers`, e.g. the
/// W3C `traceparent` the runtime injects) is sent as `cr-header-{name}`, as the Kafka and Zenoh
/// buses do. The payload (the event envelope) carries the same metadata; on consume, a
/// `cr-header-{name}` header the envelope lacks (one added by a relay or a foreign producer) is
/// added to the delivered event's headers. A name or value NATS cannot carry (a control
/// character, `:` in a name, a line break in a value) is left to the envelope alone.
pub mod headers {
    /// The event type, e.g. `OrderPlaced.v1`.
    pub const EVENT_TYPE: &str = "cr-event-type";
    /// The event id (also sent as `Nats-Msg-Id`).
    pub const EVENT_ID: &str = "cr-event-id";
    /// The correlation id, if any.
    pub const CORRELATION_ID: &str = "cr-correlation-id";
    /// The causation id, if any.
    pub const CAUSATION_ID: &str = "cr-causation-id";
    /// Prefix of each free-form header.
    pub const HEADER_PREFIX: &str = composable_rust_core::event_headers::HEADER_PREFIX;
}

/// Adds `name: value` to `map` if NATS can carry both (async-nats panics on what it cannot).
fn insert_header(map: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
        map.insert(name, value);
    } else {
        tracing::debug!(header = name, "header not representable in NATS; carried in the envelope only");
    }
}

/// The NATS headers of `event`: `Nats-Msg-Id`, the `cr-*` metadata, `cr-header-{name}` per free-form
/// header.
fn nats_headers(event: &SerializedEvent) -> HeaderMap {
    let mut map = HeaderMap::new();
    let id = event.event_id.to_string();
    insert_header(&mut map, "Nats-Msg-Id", &id);
    insert_header(&mut map, headers::EVENT_ID, &id);
    insert_header(&mut map, headers::EVENT_TYPE, &event.event_type);
    if let Some(c) = &event.metadata.correlation_id {
        insert_header(&mut map, headers::CORRELATION_ID, c);
    }
    if let Some(c) = &event.metadata.causation_id {
        insert_header(&mut map, headers::CAUSATION_ID, c);
    }
    for (name, value) in &event.metadata.headers {
        insert_header(&mut map, &format!("{}{name}", headers::HEADER_PREFIX), value);
    }
    map
}

/// Adds to `event` the free-form headers the message carries as `cr-header-{name}` and its envelope
/// lacks: the envelope wins where both have one.
fn merge_message_headers(event: &mut SerializedEvent, message: Option<&HeaderMap>) {
    let Some(map) = message else { return };
    for (name, values) in map.iter() {
        let Some(header) = AsRef::<str>::as_ref(name).strip_prefix(headers::HEADER_PREFIX) else { continue };
        if header.is_empty() || event.metadata.headers.contains_key(header) {
            continue;
        }
        if let Some(value) = values.first() {
            event.metadata.headers.insert(header.to_owned(), value.as_str().to_owned());
        }
    }
}

/// The NATS JetStream event bus. Clones share the connection.
#[derive(Clone)]
pub struct NatsEventBus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<NatsConfig>,
}

impl std::fmt::Debug for NatsEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEventBus")
            .field("url", &composable_rust_core::url::redact(self.config.server_url()))
            .field("stream", &self.config.stream_name())
            .finish_non_exhaustive()
    }
}

impl NatsEventBus {
    /// Connects to the server a composable-rust NATS URL names (`nats://[USER:PASSWORD@]HOST[:PORT]`,
    /// see [`NatsConfig::from_url`]) with default settings, and creates (or validates) the stream.
    pub async fn connect(url: &str) -> Result<Self, NatsError> {
        Self::connect_with(NatsConfig::from_url(url)?).await
    }

    /// Connects with `config` and creates (or validates) the stream.
    pub async fn connect_with(config: NatsConfig) -> Result<Self, NatsError> {
        let url = config.server_url();
        if let Err(e) = url.parse::<async_nats::ServerAddr>() {
            return Err(NatsError::InvalidUrl(UrlError::new(url, url, e.to_string())));
        }
        let unreachable = |source: BusCause| NatsError::Unreachable { url: redact(url), source };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout())
            .request_timeout(Some(config.request_timeout()))
            .connect(url)
            .await
            .map_err(|e| unreachable(BusCause::new(e)))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout());
        let stream_err = |source: BusCause| NatsError::Stream { stream: config.stream_name().to_owned(), source };
        let wanted_subject = format!("{}.>", config.subject_prefix());
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream_name().to_owned(),
                subjects: vec![wanted_subject.clone()],
                storage: match config.storage() {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                duplicate_window: config.duplicate_window(),
                ..Default::default()
            })
            .await
            .map_err(|e| stream_err(BusCause::new(e)))?;
        let info = stream.info().await.map_err(|e| stream_err(BusCause::new(e)))?;
        if !info.config.subjects.contains(&wanted_subject) {
            return Err(stream_err(BusCause::msg(format!("it exists with subjects {:?}, this bus needs {wanted_subject:?}", info.config.subjects))));
        }
        Ok(Self { client, js, config: Arc::new(config) })
    }

    /// Where this bus records the messages it terminates (too many deliveries, undecodable):
    /// [`NatsConfig::with_dead_letters`], a bounded in-memory record by default.
    pub fn dead_letter_sink(&self) -> &Arc<dyn DeadLetterSink> {
        self.config.dead_letter_sink()
    }

    /// **Escape hatch**: the underlying async-nats client (to flush, or for raw JetStream access).
    /// Using it ties your code to the async-nats version this crate depends on; everything else in
    /// this crate's API is free of it.
    pub fn raw_client(&self) -> &async_nats::Client {
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
            .get_stream(self.config.stream_name())
            .await
            .map_err(|e| subscribe_failed(BusCause::context(format!("cannot look up JetStream stream {}", self.config.stream_name()), e)))?;
        let mut config = pull::Config {
            filter_subject: filter_subject(self.config.subject_prefix(), pattern),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::New,
            ack_wait: self.config.ack_wait(),
            // The bus terminates a message itself on its last delivery (recording why); the server
            // limit is one more, as a backstop.
            max_deliver: i64::from(self.config.max_deliver()) + 1,
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
            .max_messages_per_batch(self.config.pull_batch())
            .expires(self.config.pull_expiry())
            .heartbeat(self.config.pull_expiry() / 4)
            .messages()
            .await
            .map_err(|e| subscribe_failed(BusCause::context("cannot start pulling messages", e)))
    }

    fn to_delivery(&self, message: jetstream::Message, group: &str) -> Option<Result<Delivery, EventBusError>> {
        let deliveries = message.info().map_or(1, |i| i.delivered);
        let subject = message.subject.to_string();
        let topic = topic_of(self.config.subject_prefix(), &subject).and_then(|t| Topic::new(t).ok());
        let decoded = SerializedEvent::decode(&message.payload);
        match (topic, decoded) {
            (Some(topic), Ok(mut event)) => {
                merge_message_headers(&mut event, message.headers.as_ref());
                let attempt = u32::try_from(deliveries).unwrap_or(u32::MAX);
                let bus_message = Arc::new(BusMessage { topic, event });
                let ack = NatsAck {
                    message,
                    max_deliver: self.config.max_deliver(),
                    dead_letters: Arc::clone(self.config.dead_letter_sink()),
                    bus_message: Arc::clone(&bus_message),
                    subject,
                };
                Some(Ok(Delivery::with_ack(bus_message, attempt, Box::new(ack))))
            }
            (_, Err(source)) => {
                tracing::warn!(subject = %subject, group, error = %source, "undecodable message terminated");
                let attempts = u32::try_from(deliveries).unwrap_or(u32::MAX);
                self.config.dead_letter_sink().record(DeadLetter::now(format!("nats message on {subject}"), format!("undecodable: {source}"), attempts, None));
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
}

struct NatsAck {
    message: jetstream::Message,
    max_deliver: u32,
    dead_letters: Arc<dyn DeadLetterSink>,
    /// The delivered event, for the dead letter of its last delivery.
    bus_message: Arc<BusMessage>,
    subject: String,
}

impl DeliveryAck for NatsAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        async move { self.message.ack().await.map_err(|e| EventBusError::ack_failed(BusCause::from_boxed(e))) }.boxed()
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        async move {
            let deliveries = u32::try_from(self.message.info().map_or(1, |i| i.delivered)).unwrap_or(u32::MAX);
            let kind = if deliveries >= self.max_deliver {
                tracing::error!(subject = %self.subject, deliveries, "message failed on its last allowed delivery; terminated");
                self.dead_letters.record(DeadLetter::now(
                    format!("nats message on {}", self.subject),
                    format!("not handled after {deliveries} deliveries"),
                    deliveries,
                    Some(self.bus_message.event.clone()),
                ));
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
        let subject = subject(self.config.subject_prefix(), topic.as_str());
        let span = tracing::debug_span!("publish", bus = "nats", subject = %subject, event_type = %event.event_type);
        async {
            let payload = event.encode().map_err(|e| EventBusError::publish_failed(topic.as_str(), e, false))?;
            let headers = nats_headers(event);
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
