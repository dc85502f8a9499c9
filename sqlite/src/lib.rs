//! # composable-rust-sqlite
//!
//! [`SqliteEventStore`]: the composable-rust [`EventStore`](composable_rust_core::EventStore) in one
//! SQLite file, the embedded store that keeps state across runs
//! (`checkout-saga --store sqlite:PATH`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use composable_rust_sqlite::{SqliteConfig, SqliteEventStore};
//!
//! let store = SqliteEventStore::connect("sqlite:/var/lib/shop/events.db").await?; // or open(path)
//! let scratch = SqliteEventStore::connect("sqlite::memory:").await?; // or in_memory()
//! let tuned = SqliteEventStore::connect_with(SqliteConfig::new("events.db").with_busy_timeout(Duration::from_secs(1))).await?;
//! # drop((store, scratch, tuned));
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! Like every backend: [`SqliteEventStore::connect`] takes the URL the `composable-rust` facade
//! takes (`sqlite:PATH`, `sqlite::memory:`; `sqlite:` with no path is refused),
//! [`SqliteEventStore::connect_with`] a [`SqliteConfig`] built with `with_*` setters;
//! [`SqliteEventStore::open`] and [`SqliteEventStore::in_memory`] are short forms. A store has no
//! dead letters: every failure is returned to the caller. No sqlx type is part of the API.
//!
//! ## Guarantees of `SqliteEventStore`
//!
//! | guarantee | what this backend does |
//! |---|---|
//! | delivery | an append is all or nothing: its events, outbox intents, inbox mark and deadline changes, with its own expected-version check and its own result; concurrent appends to different streams (and outbox marks) share one transaction and one fsync on the single writer connection (group commit) |
//! | ordering | versions per stream; global positions follow commit order, so `read_all` never skips an event |
//! | durability | WAL with `synchronous = FULL`: a returned append is on disk (`sqlite::memory:`: none) |
//! | redelivery / ack | an identical retry (same event ids) is an idempotent success, a reused id with other content is refused; an inbox mark refuses a second handling (`AlreadyProcessed`); outbox entries stay pending until `mark_published` |
//! | dead letters | none: every failure is returned to the caller (the runtime's outbox relay dead-letters publications that fail for good) |
//! | limits | one writer: groups of up to `max_group` (64) writes commit one after another; one file on one machine; `reader_connections` (4) readers beside it |
//!
//! The conformance suite checks them. Details:
//! - all appends go through one writer connection, so appends are serialised and global positions
//!   follow commit order; readers use their own connections and never block the writer;
//! - **group commit**: appends and [`mark_published`](composable_rust_core::EventStore::mark_published)
//!   calls go to one writer task, which writes what is queued, up to
//!   [`SqliteConfig::with_max_group`] writes (default 64), in one `BEGIN IMMEDIATE ... COMMIT`, so
//!   concurrent writers share one fsync. A group holds one append per stream; each append keeps its
//!   own expected-version check, identical-retry detection, inbox mark, outbox intents, deadline
//!   changes and result, and one refused append does not fail the others. A lone write is committed
//!   at once (no timer). A group that fails as a whole (disk full, I/O error) fails each of its
//!   writes with the retryable [`EventStoreError::Unavailable`](composable_rust_core::EventStoreError::Unavailable)
//!   and stores none of it. [`SqliteEventStore::group_commit_stats`] says how much was combined;
//!   `with_max_group(1)` writes every append in a transaction of its own, as before;
//! - published outbox rows and inbox marks are kept, with their time, until
//!   [`EventStore::prune`](composable_rust_core::EventStore::prune) deletes those older than a horizon
//!   (in batches, so appends go on meanwhile);
//! - `sqlite::memory:` (or [`SqliteEventStore::in_memory`]) gives a private in-memory store with the
//!   same guarantees except durability, a new database on every connect.

mod config;
mod group_commit;
mod read_model;
mod store;

pub use config::{SqliteConfig, SqliteError};
pub use group_commit::GroupCommitStats;
pub use store::SqliteEventStore;
