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

pub mod bus;
pub mod store;

pub use bus::{BusStats, DEFAULT_CAPACITY, InMemoryEventBus};
pub use store::InMemoryEventStore;
