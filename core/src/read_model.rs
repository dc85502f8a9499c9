//! The read side's storage vocabulary: filters for store-fed subscriptions, and the
//! [`ReadModelStore`] trait where projections keep their documents and checkpoints.
//!
//! Guarantees every [`ReadModelStore`] gives (checked by the conformance suite in
//! `composable-rust-testing`):
//! - [`ReadModelStore::commit`] writes a batch of document changes **and** moves the projection's
//!   checkpoint in one atomic step, only if the checkpoint is still where the caller read it (a
//!   compare-and-set): an update is applied exactly once, even with two workers or a crash between
//!   reading and committing. On SQLite and PostgreSQL that step is one transaction, so a crash
//!   between the update and the checkpoint cannot happen;
//! - [`ReadModelStore::swap`] replaces a live projection's documents and checkpoint with a shadow's
//!   in one atomic step (a rebuild goes live without readers ever seeing a half-built model);
//! - a lease ([`ReadModelStore::try_lease`]) lets one worker of a group run a projection at a time.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event_store::{EventStoreError, RecordedEvent};
use crate::stream::GlobalPosition;

/// Which events a store-fed subscription wants: stream categories (the part of the stream id
/// before the first `-`: `order` matches `order-17`) and event types. An empty list matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Stream categories (none: every category).
    pub categories: Vec<String>,
    /// Event types (`OrderPlaced.v1`).
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of streams in `category` (`order` for `order-*`), or also other categories added.
    #[must_use]
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }

    /// Events of type `event_type`, or also other types added.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_types.push(event_type.into());
        self
    }

    /// Whether every event matches (no category and no event type named).
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let stream = event.event.stream_id.as_ref().map_or("", |s| s.as_str());
        let category_ok =
            self.categories.is_empty() || self.categories.iter().any(|c| stream.strip_prefix(c.as_str()).is_some_and(|rest| rest.starts_with('-')));
        let type_ok = self.event_types.is_empty() || self.event_types.contains(&event.event.event_type);
        category_ok && type_ok
    }
}

/// A page of a filtered read of the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredPage {
    /// The matching events, in commit order.
    pub events: Vec<RecordedEvent>,
    /// Every event up to this position was looked at (matching or not): the next read starts
    /// after it. Never beyond what the store can read without a gap.
    pub scanned_to: GlobalPosition,
}

/// One write to a read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocChange {
    /// Sets the document at `key`.
    Put {
        /// The key.
        key: String,
        /// The encoded document.
        value: Bytes,
    },
    /// Deletes the document at `key` (nothing if absent).
    Delete {
        /// The key.
        key: String,
    },
}

/// Where a projection stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every event up to here has been applied (or filtered out).
    pub position: GlobalPosition,
    /// When the checkpoint last moved (store's clock), if it ever did.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Errors of a read-model store. New variants may be added: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// The projection's checkpoint is not where the caller read it: another worker committed, or a
    /// rebuild was swapped in. Nothing was written; read the checkpoint again and continue from it.
    #[error("projection {projection}: checkpoint moved to {actual:?} (expected {expected:?}); nothing written, continue from the stored checkpoint")]
    CheckpointMoved {
        /// The projection.
        projection: String,
        /// What the caller expected.
        expected: GlobalPosition,
        /// The stored checkpoint.
        actual: GlobalPosition,
    },
    /// A name or key is empty or the request is otherwise wrong.
    #[error("invalid read-model request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The store failed (see the cause; retryable when unavailable).
    #[error("read-model store: {0}")]
    Store(#[from] EventStoreError),
}

impl ReadModelError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReadModelError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Documents and checkpoints of projections. Object-safe: use it as `Arc<dyn ReadModelStore>`.
#[async_trait]
pub trait ReadModelStore: Send + Sync + 'static {
    /// Applies `changes` to `projection`'s documents (in order) and moves its checkpoint from
    /// `expected` to `to`, atomically; refused with [`ReadModelError::CheckpointMoved`] (nothing
    /// written) if the stored checkpoint is not `expected`. A projection never committed is at
    /// position 0.
    async fn commit(&self, projection: &str, expected: GlobalPosition, to: GlobalPosition, changes: Vec<DocChange>) -> Result<(), ReadModelError>;

    /// The projection's checkpoint (position 0 if it never committed).
    async fn checkpoint(&self, projection: &str) -> Result<Checkpoint, ReadModelError>;

    /// One document.
    async fn get(&self, projection: &str, key: &str) -> Result<Option<Bytes>, ReadModelError>;

    /// Documents whose key starts with `prefix`, in key order, at most `limit`.
    async fn list(&self, projection: &str, prefix: &str, limit: usize) -> Result<Vec<(String, Bytes)>, ReadModelError>;

    /// Deletes every document and the checkpoint of `projection` (a rebuild's shadow starts empty).
    async fn reset(&self, projection: &str) -> Result<(), ReadModelError>;

    /// Atomically replaces `live`'s documents and checkpoint with `shadow`'s, and empties `shadow`.
    async fn swap(&self, live: &str, shadow: &str) -> Result<(), ReadModelError>;

    /// Takes (or renews) the lease on `projection` for `worker` until `now + lease` if it is free,
    /// expired or already `worker`'s; returns whether `worker` holds it.
    async fn try_lease(&self, projection: &str, worker: &str, now: DateTime<Utc>, lease: std::time::Duration) -> Result<bool, ReadModelError>;
}

/// Checks what every read-model store checks first: non-empty names, keys, and a checkpoint that
/// does not move back.
pub fn validate_commit(projection: &str, expected: GlobalPosition, to: GlobalPosition, changes: &[DocChange]) -> Result<(), ReadModelError> {
    if projection.is_empty() {
        return Err(ReadModelError::InvalidRequest { reason: "empty projection name".into() });
    }
    if to < expected {
        return Err(ReadModelError::InvalidRequest { reason: format!("projection {projection}: checkpoint cannot move back from {expected:?} to {to:?}") });
    }
    if changes.iter().any(|c| match c {
        DocChange::Put { key, .. } | DocChange::Delete { key } => key.is_empty(),
    }) {
        return Err(ReadModelError::InvalidRequest { reason: format!("projection {projection}: a document change has an empty key") });
    }
    Ok(())
}

/// The smallest string greater than every string starting with `prefix` (its last character
/// incremented), or `None` if there is none (`prefix` empty or made of `char::MAX` only). Stores
/// that compare keys as bytes (SQLite, PostgreSQL `COLLATE "C"`) keep code point order, since UTF-8
/// does, so `key >= prefix AND key < successor` is exactly "starts with `prefix`", with no
/// character (`%`, `_`) special, and it is a range of the key's index.
#[must_use]
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match u32::from(last) + 1 {
            0xD800 => 0xE000, // skip the surrogates, which are no characters
            n => n,
        };
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_successor_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("sku/").as_deref(), Some("sku0"));
        assert_eq!(prefix_successor("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        for (prefix, key, inside) in
            [("ab", "ab", true), ("ab", "abz", true), ("ab", "ac", false), ("ab", "aa", false), ("a%", "abc", false), ("é", "éa", true)]
        {
            let end = prefix_successor(prefix).unwrap();
            assert_eq!(key >= prefix && key < end.as_str(), inside, "{prefix:?} {key:?}");
            assert_eq!(key.starts_with(prefix), inside);
        }
    }
}
