//! # composable-rust-nats
//!
//! [`NatsEventBus`]: the composable-rust [`EventBus`](composable_rust_core::EventBus) on NATS
//! JetStream.
//!
//! Guarantees:
//! - one JetStream stream (default `COMPOSABLE_RUST`, file storage) holds every topic, as subjects
//!   under a prefix (`order.events` is `cr.order.events`); it is created if missing and validated if
//!   present;
//! - `publish` returns once JetStream acknowledged the message, so an `Ok` publish survives a server
//!   restart with file storage. The event id is sent as `Nats-Msg-Id`: a publish retried within the
//!   stream's duplicate window is stored once. Event type, id, correlation and causation ids travel
//!   as headers (`cr-event-type`, `cr-event-id`, `cr-correlation-id`, `cr-causation-id`) so other
//!   clients can route and de-duplicate; the payload is the event envelope;
//! - a consumer group is a durable pull consumer per subscribed pattern, named after the group:
//!   members share the work and the server remembers progress. Acks are explicit and sent only on
//!   [`Delivery::ack`](composable_rust_core::Delivery::ack): what was not acknowledged before a crash
//!   comes again after `ack_wait`. `nack` asks for redelivery at once. After `max_deliver` attempts a
//!   message is terminated and recorded as a dead letter ([`NatsEventBus::dead_letters`]);
//! - an exclusive subscription is an ephemeral consumer that goes away when unused;
//! - a message that is not an event envelope is terminated (never redelivered) and reported as an
//!   [`EventBusError::Decode`](composable_rust_core::EventBusError::Decode) item.

pub mod bus;
mod config;
mod naming;

pub use bus::{NatsDeadLetter, NatsEventBus};
pub use config::{NatsConfig, NatsError, Storage};
