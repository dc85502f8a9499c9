//! # composable-rust-nats
//!
//! [`NatsEventBus`]: the composable-rust [`EventBus`](composable_rust_core::EventBus) on NATS
//! JetStream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use composable_rust_core::InMemoryDeadLetters;
//! use composable_rust_nats::{NatsConfig, NatsEventBus};
//!
//! let bus = NatsEventBus::connect("nats://127.0.0.1:4222").await?; // defaults
//! let dead_letters = Arc::new(InMemoryDeadLetters::default()); // the sink the runtime's Executor is given too
//! let config = NatsConfig::from_url("nats://127.0.0.1:4222")?.with_max_deliver(3).with_dead_letters(dead_letters);
//! let tuned = NatsEventBus::connect_with(config).await?;
//! # drop((bus, tuned));
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! Like every backend: [`NatsEventBus::connect`] takes the URL the `composable-rust` facade takes
//! (`nats://[USER:PASSWORD@]HOST[:PORT]`), [`NatsEventBus::connect_with`] a [`NatsConfig`] built
//! with `with_*` setters. Messages the bus gives up on go to the configured
//! [`DeadLetterSink`](composable_rust_core::DeadLetterSink) (a bounded in-memory one by default).
//! The async-nats client is reachable only through [`NatsEventBus::raw_client`], an escape hatch
//! that ties your code to the async-nats version this crate uses.
//!
//! ## Guarantees of `NatsEventBus`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | at least once: `publish` returns once JetStream acknowledged the message; a named group is a durable pull consumer per pattern (members share the work, the server keeps its position); an exclusive subscription is an ephemeral consumer from now on |
//! | ordering | per subject, the stream's order; a redelivered message can come after later ones |
//! | durability | file storage by default: an acknowledged publish survives a server restart (`Storage::Memory` does not) |
//! | redelivery / ack | explicit acks, sent only by `ack`; an unacknowledged message comes again after `ack_wait` (30 s), a `nack`ed one at once; a publish retried within `duplicate_window` (2 min) is stored once (`Nats-Msg-Id` is the event id) |
//! | dead letters | on its `max_deliver`-th delivery (5) a `nack`ed message is terminated and recorded in the dead-letter sink with its event; a message that is not an event is terminated, recorded there and reported as a `Decode` item |
//! | limits | one JetStream stream for every topic, subjects under a prefix (`cr.`); `pull_batch` (64) messages pulled ahead per subscriber; the server's `max_payload` (1 MB by default) |
//!
//! ## Details
//!
//! - One JetStream stream (default `COMPOSABLE_RUST`) holds every topic, as subjects under a prefix
//!   (`order.events` is `cr.order.events`); it is created if missing and validated if present.
//! - Event type, id, correlation and causation ids travel as headers (`cr-event-type`,
//!   `cr-event-id`, `cr-correlation-id`, `cr-causation-id`) so other clients can route and
//!   de-duplicate; the payload is the event envelope.
//! - A durable consumer is named after the group and the pattern, so processes subscribing alike
//!   share it; an exclusive subscription's ephemeral consumer goes away 30 s after it stops pulling.

pub mod bus;
mod config;
mod naming;

pub use bus::NatsEventBus;
pub use config::{NatsConfig, NatsError, Storage};
