//! # composable-rust-redpanda
//!
//! [`RedpandaEventBus`]: the composable-rust [`EventBus`](composable_rust_core::EventBus) on
//! Redpanda or any Kafka-protocol broker, through librdkafka (rdkafka).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use composable_rust_core::{EventBus, SerializedEvent};
//! use composable_rust_redpanda::{Compression, RedpandaConfig, RedpandaEventBus};
//!
//! let bus = RedpandaEventBus::connect("redpanda://127.0.0.1:9092").await?; // defaults
//! let tuned = RedpandaEventBus::connect_with(RedpandaConfig::new("127.0.0.1:9092").with_compression(Compression::Lz4)).await?;
//! tuned.publish("order.events", &SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], None)).await?;
//! let mut orders = bus.subscribe(&["order.events"]).await?; // group composable-rust-order.events-{hash}
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! Like every backend: [`RedpandaEventBus::connect`] takes the URL the `composable-rust` facade
//! takes (`redpanda://HOST:PORT[,HOST:PORT...][?KEY=VALUE&...]` or `kafka://...`, each query pair a
//! librdkafka property), [`RedpandaEventBus::connect_with`] a [`RedpandaConfig`] built with `with_*`
//! setters. Messages the bus gives up on go to the configured
//! [`DeadLetterSink`](composable_rust_core::DeadLetterSink) (a bounded in-memory one by default).
//! rdkafka is reachable only through the escape hatches [`RedpandaEventBus::raw_producer`],
//! [`RedpandaConfig::raw_producer_config`] and [`RedpandaConfig::raw_consumer_config`], which tie
//! your code to the rdkafka version this crate uses.
//!
//! ## Guarantees of `RedpandaEventBus`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | at least once: `publish` returns once the broker acknowledged (`acks=all`, idempotent producer); a subscription is one member of a Kafka consumer group, committing only what was handled |
//! | ordering | per stream: messages are keyed by stream id, so one aggregate's events share a partition and keep their order; none across the streams of a topic |
//! | durability | the broker's: topics created on first use with 3 partitions and replication 1 (`TopicSpec`) |
//! | redelivery / ack | an offset is stored only when its delivery and every earlier one of its partition were acknowledged; what was not comes again after a crash or rebalance; `nack` redelivers from this member |
//! | dead letters | a message that is not a composable-rust event (no `cr-event-type` header, bad metadata) is acknowledged past, recorded in the dead-letter sink and reported as a `Decode` item |
//! | limits | `buffer_size` (100,000) messages buffered by the producer; `delivery_timeout` (30 s) per publish; the broker's message size limit (1 MB by default) |
//!
//! ## Details: publishing
//! - Messages are keyed by the event's stream id (its aggregate), so all events of one aggregate go
//!   to one partition and keep their order while different aggregates spread over the partitions.
//!   Events with no stream are keyed by their topic: they keep their order, in one partition.
//!   Order across different streams of a topic is not kept (Kafka orders within a partition only).
//! - The payload is the event's data as it is; event id, type, stream position, correlation,
//!   causation, time and headers travel as Kafka headers (`cr-event-id`, `cr-event-type`, ... see
//!   [`composable_rust_core::event_headers`]) so other clients can route and de-duplicate.
//! - `publish` returns once the broker acknowledged the message (`acks=all` by default).
//!   Production is idempotent by default: librdkafka's retries never duplicate or reorder. A failure
//!   is an [`EventBusError::PublishFailed`](composable_rust_core::EventBusError::PublishFailed) that
//!   says whether a retry may succeed; nothing is dropped silently.
//! - Topics are created on first use (3 partitions, replication 1 by default;
//!   [`RedpandaConfig::with_auto_create_topics`]), or explicitly with [`RedpandaEventBus::create_topic`].
//!
//! ## Details: consuming, at-least-once, commit after handle
//! - A subscription is one consumer in a Kafka consumer group. Exact topics are subscribed by name,
//!   patterns (`shop.*.events`, `shop.>`) as anchored regular expressions with the same meaning as on
//!   every bus; new matching topics are picked up within the metadata refresh interval.
//! - An offset is stored only when the delivery **and every earlier delivery of its partition** were
//!   acknowledged ([`Delivery::ack`](composable_rust_core::Delivery::ack)); librdkafka commits stored
//!   offsets periodically, before partitions are revoked in a rebalance, and on close. A process
//!   killed mid-handling gets its unacknowledged messages again (it, or the member that took over).
//! - `nack` delivers the message again from this member (its offset stays uncommitted).
//! - A message that is not a composable-rust event (no `cr-event-type` header, malformed metadata) is
//!   acknowledged past, recorded in the dead-letter sink ([`RedpandaEventBus::dead_letter_sink`]) and reported as an
//!   [`EventBusError::Decode`](composable_rust_core::EventBusError::Decode) item; consumption goes on.
//!   A message from another producer that has `cr-event-type` but no `cr-event-id` is delivered with
//!   an id derived from its topic, partition and offset, stable across redeliveries.
//! - The default group of [`EventBus::subscribe`](composable_rust_core::EventBus::subscribe) is
//!   named after the set of topics, `composable-rust-{sorted topics}-{hash of the set}`
//!   ([`default_group_name`](composable_rust_core::event_bus::default_group_name)), or
//!   [`RedpandaConfig::with_consumer_group`]; a new group starts
//!   at the earliest retained message unless configured otherwise. An exclusive subscription is a
//!   fresh group that starts at the current end of the topics, so it receives what is published after
//!   `subscribe` returned.

pub mod bus;
mod config;
mod consumer;
#[cfg(feature = "testcontainers")]
pub mod containers;
mod offsets;

pub use bus::RedpandaEventBus;
pub use config::{Acks, Compression, OffsetReset, RedpandaConfig, RedpandaError, TopicSpec};
