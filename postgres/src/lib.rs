//! # composable-rust-postgres
//!
//! [`PostgresEventStore`]: the composable-rust [`EventStore`](composable_rust_core::EventStore) on
//! PostgreSQL (sqlx).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use composable_rust_postgres::{PostgresConfig, PostgresEventStore};
//!
//! let store = PostgresEventStore::connect("postgres://app:secret@127.0.0.1:5432/shop").await?;
//! store.migrate().await?; // once per database; safe on every start
//! let tuned = PostgresEventStore::connect_with(PostgresConfig::from_url("postgres://app:secret@127.0.0.1:5432/shop")?.with_max_connections(32)).await?;
//! # drop(tuned);
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! Like every backend: [`PostgresEventStore::connect`] takes the URL the `composable-rust` facade
//! takes (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, `postgresql://...`),
//! [`PostgresEventStore::connect_with`] a [`PostgresConfig`] built with `with_*` setters. A store
//! has no dead letters: every failure is returned to the caller. The sqlx pool is reachable only
//! through [`PostgresEventStore::raw_pool`], an escape hatch that ties your code to the sqlx version
//! this crate uses.
//!
//! ## Guarantees of `PostgresEventStore`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | an append is one statement and one transaction: its events, outbox intents and inbox mark, or nothing; concurrent appends to different streams share a statement (group commit), each with its own check and result |
//! | ordering | versions per stream; gap-free global reads: `read_all` never moves past an event still to commit (advisory-lock horizon) |
//! | durability | PostgreSQL's: a returned append is committed |
//! | redelivery / ack | an identical retry (same event ids) is an idempotent success, a reused id with other content is refused; an inbox mark refuses a second handling (`AlreadyProcessed`); outbox entries stay pending until `mark_published` |
//! | dead letters | none: every failure is returned to the caller (the runtime's outbox relay dead-letters publications that fail for good) |
//! | limits | `max_connections` (16) pooled connections; `statement_timeout` (10 s); groups of up to `max_appends_per_statement` (64) appends |
//!
//! ## Details (the conformance suite and this crate's tests check them)
//!
//! - an append is **one statement, one round trip, one transaction**: it takes the shared append lock,
//!   claims the versions on the stream's row (a mismatch inserts nothing and is reported as
//!   `ConcurrencyConflict` with the actual version), inserts all events with one
//!   `INSERT ... SELECT FROM UNNEST`, and the outbox intents with them;
//! - **group commit**: appends that arrive while earlier ones are being written (to different
//!   streams, up to [`PostgresConfig::max_appends_per_statement`]) share one such statement, with
//!   [`PostgresConfig::group_statements_in_flight`] statements at a time. Each append in a group keeps
//!   its own expected-version check and result; a group that fails as a whole (a reused event id, an
//!   inbox mark already present, a deadlock) writes nothing and its appends run alone, each getting
//!   its own precise outcome. A lone append never waits for a group to form.
//!   [`PostgresEventStore::group_commit_stats`] shows how much was combined. With group commit on,
//!   concurrent outbox marks (`mark_published`) also share one `UPDATE`
//!   ([`PostgresEventStore::outbox_mark_statements`]);
//! - event ids are unique: an identical retry is an idempotent success (`duplicate: true`), a reused
//!   id with other content is refused;
//! - **gap-free global reads.** Global positions come from an identity sequence, so a transaction can
//!   take a lower position and commit after a higher one. Every append holds a *shared* advisory lock
//!   (key [`APPEND_LOCK_KEY`]) until it commits; `read_all` first takes the *exclusive* lock for an
//!   instant, which waits for the appends in flight, and reads the highest committed position as its
//!   horizon. Appends that start later get higher positions, so a reader never moves past an event
//!   that is still to commit. Shared locks do not block each other: concurrent appends keep
//!   PostgreSQL's group commit;
//! - the schema lives in the `composable_rust` schema and is created by [`PostgresEventStore::migrate`]
//!   (embedded migrations); a store used before that says so.
//!
//! - an append's inbox mark (consumer, event id) is inserted by the same statement: a consumer cannot
//!   record the handling of one event twice (`AlreadyProcessed`);
//! - published outbox rows and inbox marks are kept, with the server's time, until
//!   [`EventStore::prune`](composable_rust_core::EventStore::prune) deletes those older than a horizon,
//!   in batches of short transactions (indexed, migration `20261125000003_retention`).
//!
//! With the `testcontainers` feature, `containers::PostgresContainer` starts PostgreSQL in Docker
//! for tests, for users who have a Docker engine.

mod config;
#[cfg(feature = "testcontainers")]
pub mod containers;
mod group_commit;
mod marks;
mod read_model;
mod store;

pub use config::{PostgresConfig, PostgresError};
pub use group_commit::GroupCommitStats;
pub use store::{APPEND_LOCK_KEY, PostgresEventStore};
