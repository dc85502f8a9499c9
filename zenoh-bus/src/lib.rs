//! # composable-rust-zenoh
//!
//! [`ZenohEventBus`]: the composable-rust [`EventBus`](composable_rust_core::EventBus) on Zenoh 1.x,
//! embedded in the process (no network at all) or as a peer on explicit endpoints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use composable_rust_core::{EventBus, SerializedEvent};
//! use composable_rust_zenoh::{ZenohConfig, ZenohEventBus};
//!
//! let embedded = ZenohEventBus::connect("zenoh:").await?; // or ZenohEventBus::embedded()
//! let peer = ZenohEventBus::connect_with(ZenohConfig::peer().with_listen("tcp/127.0.0.1:7447")).await?;
//! let mut orders = peer.subscribe(&["Order"]).await?;
//! embedded.publish("Order", &SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], None)).await?;
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! Like every backend: [`ZenohEventBus::connect`] takes the URL the `composable-rust` facade takes
//! (`zenoh:` embedded, `zenoh:peer?listen=ENDPOINT&connect=ENDPOINT`), [`ZenohEventBus::connect_with`]
//! a [`ZenohConfig`] built with `with_*` setters. Samples the bus cannot deliver go to the configured
//! [`DeadLetterSink`](composable_rust_core::DeadLetterSink) (a bounded in-memory one by default).
//! Zenoh's own types are reachable only through the escape hatches
//! [`ZenohEventBus::raw_session`], [`ZenohEventBus::from_raw_session`],
//! [`ZenohConfig::raw_zenoh_config`] and [`metadata::raw_encode`] / [`metadata::raw_decode`], which
//! tie your code to the zenoh version this crate uses.
//!
//! ## Guarantees of `ZenohEventBus`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | at most once, live: to the subscriptions that match when `publish` runs, while the peers are connected; `Ok` means Zenoh took the sample for routing, not a broker acknowledgement; opt-in history replays a publisher's latest events to late subscribers |
//! | ordering | per publisher and key, publish order |
//! | durability | none: nothing is stored (opt-in history is in the publisher's memory) |
//! | redelivery / ack | named groups are local to one bus instance: `nack` puts the delivery back into the group's buffer; an exclusive subscriber needs no `ack` and its `nack` is refused; nothing is redelivered across processes |
//! | dead letters | a sample that is not an event (no attachment, a key outside the layout) is recorded in the dead-letter sink and reported as a `Decode` item; samples dropped by a full buffer are counted and reported as `Lagged`, not recorded (their content is gone) |
//! | limits | `subscriber_capacity` (65,536) samples buffered per subscription; the `tcp` transport only; groups do not span processes |
//!
//! ## Keys
//! Events are put under `events/{topic}/{stream_id}/{stream_version}`; see [`keys`] for the exact
//! mapping, percent-encoding of stream ids, session-scoped copies under `sessions/{id}/...`, and how
//! topic patterns (`shop.*.events`, `shop.>`) and native key expressions (`events/Order/**`) are
//! subscribed to.
//!
//! ## What a sample carries
//! The payload is the event's data as it is; id, type, stream position, correlation, causation, time
//! and headers travel in the attachment as string pairs any Zenoh binding reads ([`metadata`]).
//!
//! ## Details: what Zenoh does and does not give
//! - `publish` puts with Zenoh's default reliable reliability and `CongestionControl::Block`: a
//!   congested link slows the publisher rather than dropping a sample after `publish` returned `Ok`.
//!   `Ok` means Zenoh accepted the sample for routing to the subscribers that match *now*; it is not
//!   a broker acknowledgement and nothing is stored.
//! - A subscription receives what is published after `subscribe` returned, while the peers are
//!   connected. **By default there is no replay**: events published while a subscriber was away, or
//!   before it subscribed, are not delivered later, and nothing survives a restart. Recover from the
//!   event store (`EventStore::read_all` from the last position you handled); the runtime's outbox
//!   relay republishes what a crashed publisher never sent.
//! - Opt-in history: a publishing bus with [`ZenohConfig::with_history`]`(n)` keeps its latest `n` events
//!   in memory and serves them to queries; a subscribing bus with
//!   [`ZenohConfig::with_replay_history`]`(true)` asks every reachable publisher for the retained events
//!   matching each subscription, right after subscribing, and delivers them with the live ones, each
//!   event once. It is best effort: a publisher that restarted or is unreachable has nothing to give,
//!   and replayed events can interleave with live ones (their stream versions tell the order).
//! - Per publisher and key, samples arrive in publish order.
//! - A subscription buffers up to [`ZenohConfig::subscriber_capacity`] samples. Zenoh's threads are
//!   never blocked by a slow consumer: samples beyond the buffer are dropped for that subscription and
//!   reported as one [`EventBusError::Lagged`](composable_rust_core::EventBusError::Lagged) item with
//!   the count ([`ZenohStats::lagged`]). Samples that are not composable-rust events (no or a bad
//!   attachment, a key outside the layout) are reported as
//!   [`EventBusError::Decode`](composable_rust_core::EventBusError::Decode) items and recorded in the
//!   dead-letter sink ([`ZenohEventBus::dead_letter_sink`]); the stream goes on.
//! - **Consumer groups are local to one bus instance**: members of a named group subscribed through
//!   the same `ZenohEventBus` share one buffer (each event goes to one member), and `nack` puts a
//!   delivery back into it. Two processes subscribing with the same group name each receive every
//!   event: Zenoh has no broker to split work between processes. Use the NATS or Redpanda bus when
//!   several processes must share one stream of work. An exclusive subscription is a live listener:
//!   `ack` does nothing and `nack` is refused.
//! - Only the `tcp` transport is compiled in.

pub mod bus;
mod config;
mod history;
pub mod keys;
pub mod metadata;

pub use bus::{ZenohEventBus, ZenohStats};
pub use config::{DEFAULT_SUBSCRIBER_CAPACITY, ZenohConfig, ZenohError, ZenohMode};
