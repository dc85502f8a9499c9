//! # composable-rust-sqlite
//!
//! [`SqliteEventStore`]: the composable-rust [`EventStore`](composable_rust_core::EventStore) in one
//! SQLite file, the embedded store that keeps state across runs
//! (`checkout-saga --store sqlite:PATH`).
//!
//! Guarantees (the conformance suite checks them):
//! - the database runs in WAL mode with `synchronous = FULL`: a returned append is on disk;
//! - all appends go through one writer connection, so appends are serialised, the expected version
//!   is checked atomically, and global positions follow commit order (`read_all` never skips an
//!   event that commits late); readers use their own connections and never block the writer;
//! - event ids are unique: an identical retry is an idempotent success, a reused id with other
//!   content is refused; outbox intents are committed with their events.
//!
//! - an append's inbox mark (consumer, event id) is committed in the same transaction: a consumer
//!   cannot record the handling of one event twice (`AlreadyProcessed`);
//! - published outbox rows and inbox marks are kept, with their time, until
//!   [`EventStore::prune`](composable_rust_core::EventStore::prune) deletes those older than a horizon
//!   (in batches, so appends go on meanwhile).
//!
//! `SqliteEventStore::open_url("sqlite::memory:")` (or [`SqliteEventStore::in_memory`]) gives a
//! private in-memory store with the same guarantees except durability; `sqlite:` with no path is
//! refused ([`SqliteError::EmptyPath`]).

mod store;

pub use store::{SqliteError, SqliteEventStore};
