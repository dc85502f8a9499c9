//! # composable-rust-memory
//!
//! The embedded backends of composable-rust: pure Rust, no server, no C library.
//!
//! - [`InMemoryEventStore`]: the event store with every guarantee of the durable ones (the same
//!   conformance suite proves it), except that it lives in this process's memory;
//! - [`InMemoryEventBus`]: an event bus on one `tokio::sync::broadcast` channel, with consumer
//!   groups, acknowledgements and the shared topic-pattern syntax.
//!
//! They are products, not mocks: use them for single-process services, the embedded example, and
//! tests. Nothing survives the process. `composable-rust-testing` re-exports both for its test tools;
//! applications reach them through this crate or the `composable-rust` facade (`memory:` URLs).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use composable_rust_core::{EventBus, EventStore, SerializedEvent, SubscribeOptions};
//! use composable_rust_memory::{InMemoryEventBus, InMemoryEventStore};
//! use futures::StreamExt;
//!
//! let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
//! let bus: Arc<dyn EventBus> = Arc::new(InMemoryEventBus::new());
//! let mut orders = bus.subscribe_with(&["order.events"], SubscribeOptions::exclusive()).await?;
//! bus.publish("order.events", &SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], None)).await?;
//! let delivery = orders.next().await.expect("one delivery")?;
//! assert_eq!(delivery.event().event_type, "OrderPlaced.v1");
//! # drop(store);
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! `InMemoryEventBus::new()` / `with_capacity(n)` and `InMemoryEventStore::new()`, or the
//! `composable-rust` facade's `memory:` and `memory:?capacity=N` URLs. Neither has dead letters: the
//! bus reports a slow subscriber's loss as `Lagged`, the store returns every failure to the caller.
//! No dependency's type is part of the API.
//!
//! ## Guarantees of `InMemoryEventBus`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | each event published after `subscribe` returned, once to every subscriber and to one member of each named group; `publish` never blocks and shares one `Arc<BusMessage>` with all subscribers |
//! | ordering | publish order, across topics (one channel) |
//! | durability | none: this process's memory |
//! | redelivery / ack | in a named group, `nack` puts the event back at the front of the group's queue; an exclusive subscriber needs no `ack` and its `nack` is refused (`RedeliveryUnsupported`) |
//! | dead letters | none: nothing is given up on; a subscriber or group more than `capacity` events behind gets one `Lagged { missed }` item and resumes at the oldest event kept |
//! | limits | `capacity` events kept for slow subscribers (16,384 by default, `memory:?capacity=N`); one process |
//!
//! ## Guarantees of `InMemoryEventStore`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | an append is atomic with its expected-version check, outbox intents and inbox mark; `read_stream` and `read_all` return what was appended |
//! | ordering | versions per stream; global positions in append order, gap-free |
//! | durability | none: this process's memory |
//! | redelivery / ack | an identical retry (same event ids) is an idempotent success, a reused id with other content is refused; an inbox mark refuses a second handling (`AlreadyProcessed`); outbox entries stay pending until `mark_published` |
//! | dead letters | none: every failure is returned to the caller (the runtime's outbox relay dead-letters publications that fail for good) |
//! | limits | the process's memory (`prune` drops published outbox entries and old inbox marks) |

pub mod bus;
mod read_model;
pub mod store;

pub use bus::{BusStats, DEFAULT_CAPACITY, InMemoryEventBus};
pub use store::InMemoryEventStore;
