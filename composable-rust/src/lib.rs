//! # composable-rust
//!
//! composable-rust in one dependency. The framework is split into crates so that an application
//! compiles only the clients it uses (`composable-rust-core` knows no backend; each bus and store is
//! its own crate). This facade puts them back together behind cargo features, and connects a bus or
//! a store from a URL, so configuration picks the backend and the code does not change:
//!
//! ```toml
//! [dependencies]
//! composable-rust = { version = "0.1", features = ["sqlite", "nats"] }
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), composable_rust::ConnectError> {
//! use composable_rust::runtime::Executor;
//!
//! let store = composable_rust::store::connect("memory:").await?; // or COMPOSABLE_STORE_URL: store::from_env()
//! let bus = composable_rust::bus::connect("memory:").await?; // or COMPOSABLE_BUS_URL: bus::from_env()
//! let executor = Executor::builder().store(store).bus(bus).build();
//! # drop(executor);
//! # Ok(()) }
//! ```
//!
//! ## What is where
//!
//! - the crate root: everything of `composable-rust-core` (`Reducer`, `Effect`, `EventBus`,
//!   `EventStore`, `Aggregate`, `Saga`, topics, ...);
//! - [`runtime`]: `composable-rust-runtime` (`Store`, `Executor`, `AggregateHandler`, `SagaRunner`,
//!   the outbox relay, `DualEventBus`, the bus decorators `NamespacedBus` and `CountingBus`);
//! - `testing` (feature `testing`): `composable-rust-testing` (`TestStore`, scenarios, conformance
//!   suites);
//! - `memory`, `sqlite`, `postgres`, `nats`, `redpanda`, `zenoh`: each backend crate, under the
//!   feature of the same name;
//! - [`bus`] and [`store`]: connect by URL; [`ConnectError`] says what went wrong.
//!
//! ## Features
//!
//! | feature | gives | default |
//! |---|---|---|
//! | `memory` | `memory:` bus and store (`composable-rust-memory`) | yes |
//! | `testing` | `composable_rust::testing` (implies `memory`) | yes |
//! | `sqlite` | `sqlite:PATH`, `sqlite::memory:` stores; compiles the bundled SQLite (C) | no |
//! | `postgres` | `postgres://`, `postgresql://` stores | no |
//! | `nats` | `nats://` buses (JetStream) | no |
//! | `redpanda` | `redpanda://`, `kafka://` buses; compiles librdkafka (C) | no |
//! | `zenoh` | `zenoh:` buses, embedded or peer | no |
//! | `otel` | W3C trace context through OpenTelemetry in the runtime (`composable-rust-runtime/otel`) | no |
//! | `web` | `composable_rust::web`: SSE feeds of the store, `/health/*` and `/metrics` on axum (`composable-rust-web`) | no |
//! | `all` | all of the above | no |
//!
//! The defaults are embedded and pure Rust: a default build compiles no C library and no network
//! client. A URL whose backend is left out is refused with [`ConnectError::FeatureDisabled`], which
//! names the feature to enable.
//!
//! ## URLs
//!
//! | URL | backend | feature |
//! |---|---|---|
//! | `memory:`, `memory:?capacity=N` | in-memory bus or store | `memory` |
//! | `sqlite:PATH`, `sqlite::memory:` | SQLite store | `sqlite` |
//! | `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, `postgresql://...` | PostgreSQL store, schema migrated on connect | `postgres` |
//! | `nats://HOST:PORT` | NATS JetStream bus | `nats` |
//! | `redpanda://HOST:PORT[,HOST:PORT][?KEY=VALUE&...]`, `kafka://...` | Redpanda/Kafka bus, query pairs passed to librdkafka | `redpanda` |
//! | `zenoh:` | Zenoh bus, embedded (no network) | `zenoh` |
//! | `zenoh:peer?listen=ENDPOINT&connect=ENDPOINT` | Zenoh peer, `listen`/`connect` repeatable | `zenoh` |
//! | `dual:PRIMARY\|SECONDARY[\|MODE]` | `DualEventBus` for migrating from one bus to another | both sides' |
//!
//! The details of each are in [`bus`] and [`store`]. Each URL has one parser: this crate picks the
//! backend by scheme and hands the URL to the backend's own (`NatsConfig::from_url`,
//! `RedpandaConfig::from_url`, `ZenohConfig::from_url`, `SqliteConfig::from_url`,
//! `PostgresConfig::from_url`, the ones each backend's `connect(url)` uses), with the grammar of
//! [`url`]. [`bus::connect_with_dead_letters`] records a bus's dead letters in the sink the runtime's
//! `Executor` is given.

mod error;
mod parse;

pub mod bus;
pub mod store;

pub use error::{BackendError, ConnectError, Target};

pub use composable_rust_core::*;

/// `composable-rust-runtime`: the `Executor`, `Store`, `AggregateHandler`, `SagaRunner`, outbox
/// relay, `DualEventBus` and the bus decorators.
pub use composable_rust_runtime as runtime;

/// `composable-rust-memory`: the in-memory event store and event bus (feature `memory`).
#[cfg(feature = "memory")]
pub use composable_rust_memory as memory;

/// `composable-rust-testing`: `TestStore`, `TestClock`, scenarios and conformance suites (feature
/// `testing`).
#[cfg(feature = "testing")]
pub use composable_rust_testing as testing;

/// `composable-rust-sqlite`: the SQLite event store (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use composable_rust_sqlite as sqlite;

/// `composable-rust-postgres`: the PostgreSQL event store (feature `postgres`).
#[cfg(feature = "postgres")]
pub use composable_rust_postgres as postgres;

/// `composable-rust-nats`: the NATS JetStream event bus (feature `nats`).
#[cfg(feature = "nats")]
pub use composable_rust_nats as nats;

/// `composable-rust-redpanda`: the Redpanda/Kafka event bus (feature `redpanda`).
#[cfg(feature = "redpanda")]
pub use composable_rust_redpanda as redpanda;

/// `composable-rust-zenoh`: the Zenoh event bus (feature `zenoh`).
#[cfg(feature = "zenoh")]
pub use composable_rust_zenoh as zenoh;

/// SSE feeds, health and metrics endpoints on axum (feature `web`).
#[cfg(feature = "web")]
pub use composable_rust_web as web;

/// The examples of `docs/observability.md`, compiled and run as doc tests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../docs/observability.md")]
pub struct ObservabilityGuide;

#[cfg(test)]
mod tests {
    use crate::parse::Backend;

    /// Every backend that this build leaves out is refused by `connect` with the feature's name,
    /// whatever the features of the test run (scripts/test.sh runs this with none, too).
    #[tokio::test]
    async fn connect_refuses_exactly_the_backends_this_build_leaves_out() {
        let bus_urls =
            [("memory:", Backend::Memory), ("nats://127.0.0.1:1", Backend::Nats), ("kafka://127.0.0.1:1", Backend::Redpanda), ("zenoh:", Backend::Zenoh)];
        for (url, backend) in bus_urls {
            match crate::bus::BusUrl::parse(url) {
                Err(crate::ConnectError::FeatureDisabled { feature, .. }) => assert!(!backend.compiled() && feature == backend.feature(), "{url}"),
                Ok(_) => assert!(backend.compiled(), "{url}"),
                Err(e) => panic!("{url}: {e}"),
            }
        }
        let store_urls = [("memory:", Backend::Memory), ("sqlite::memory:", Backend::Sqlite), ("postgres://u@127.0.0.1:1/db", Backend::Postgres)];
        for (url, backend) in store_urls {
            match crate::store::StoreUrl::parse(url) {
                Err(crate::ConnectError::FeatureDisabled { feature, .. }) => assert!(!backend.compiled() && feature == backend.feature(), "{url}"),
                Ok(_) => assert!(backend.compiled(), "{url}"),
                Err(e) => panic!("{url}: {e}"),
            }
        }
        // A URL built by hand for a left-out backend is refused by `connect` too.
        let memory = crate::bus::BusUrl::memory().connect().await;
        assert_eq!(memory.is_ok(), Backend::Memory.compiled(), "{:?}", memory.err());
        let zenoh = crate::bus::BusUrl::zenoh_embedded();
        if !Backend::Zenoh.compiled() {
            assert!(matches!(zenoh.connect().await, Err(crate::ConnectError::FeatureDisabled { feature: "zenoh", .. })));
        }
    }
}
