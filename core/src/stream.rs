//! Stream identity and versions: what optimistic concurrency is checked against.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest stream id accepted, in bytes. Longer ids are almost always a bug (an id built from a payload).
pub const MAX_STREAM_ID_LEN: usize = 256;

/// Why a stream id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// The id was empty or only whitespace.
    #[error("stream id is empty: give each aggregate or saga instance a non-empty id such as `order-42`")]
    Empty,
    /// The id was longer than [`MAX_STREAM_ID_LEN`].
    #[error("stream id is {len} bytes long, the limit is {MAX_STREAM_ID_LEN}: use a shorter key (e.g. a UUID)")]
    TooLong {
        /// Length of the refused id in bytes.
        len: usize,
    },
    /// The id contained a control character (newline, NUL, ...).
    #[error("stream id {id:?} contains a control character: use printable characters only")]
    ControlCharacter {
        /// The refused id.
        id: String,
    },
}

/// The identity of one event stream (one aggregate or saga instance), e.g. `order-42`.
///
/// Validated on construction: non-empty, at most [`MAX_STREAM_ID_LEN`] bytes, no control characters.
/// Cloning is cheap (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates and wraps a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self, StreamIdError> {
        let id: String = id.into();
        if id.trim().is_empty() {
            return Err(StreamIdError::Empty);
        }
        if id.len() > MAX_STREAM_ID_LEN {
            return Err(StreamIdError::TooLong { len: id.len() });
        }
        if id.chars().any(char::is_control) {
            return Err(StreamIdError::ControlCharacter { id });
        }
        Ok(Self(id.into()))
    }

    /// Builds `{prefix}-{id}`, the convention used for aggregate and saga streams.
    pub fn for_instance(prefix: &str, id: &str) -> Result<Self, StreamIdError> {
        if id.trim().is_empty() {
            return Err(StreamIdError::Empty);
        }
        Self::new(format!("{prefix}-{id}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = StreamIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = StreamIdError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({:?})", &*self.0)
    }
}

/// Version of a stream: the number of events in it. A new stream has version 0; its first event
/// gets version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Version(pub u64);

impl Version {
    /// The version of a stream with no events.
    pub const INITIAL: Version = Version(0);

    /// The version after this one.
    #[must_use]
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Position of an event in the store's global, commit-ordered log (starts at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct GlobalPosition(pub u64);

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the writer believes the stream's version is, checked atomically with the append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the current version is (no concurrency check).
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be exactly at this version.
    Exact(Version),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn accepts(self, actual: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == Version::INITIAL,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }

    /// `Exact(v)`, or `NoStream` when `v` is the initial version: the natural expectation after loading.
    pub fn from_loaded(v: Version) -> Self {
        if v == Version::INITIAL { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(v) }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "exactly {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_validated() {
        assert_eq!(StreamId::new(""), Err(StreamIdError::Empty));
        assert_eq!(StreamId::new("   "), Err(StreamIdError::Empty));
        assert!(matches!(StreamId::new("a\nb"), Err(StreamIdError::ControlCharacter { .. })));
        assert!(matches!(StreamId::new("x".repeat(300)), Err(StreamIdError::TooLong { len: 300 })));
        assert_eq!(StreamId::new("order-1").unwrap().as_str(), "order-1");
        assert_eq!(StreamId::for_instance("order", ""), Err(StreamIdError::Empty));
    }

    #[test]
    fn expected_version_semantics() {
        assert!(ExpectedVersion::Any.accepts(Version(7)));
        assert!(ExpectedVersion::NoStream.accepts(Version(0)));
        assert!(!ExpectedVersion::NoStream.accepts(Version(1)));
        assert!(ExpectedVersion::Exact(Version(3)).accepts(Version(3)));
        assert!(!ExpectedVersion::Exact(Version(3)).accepts(Version(4)));
        assert_eq!(ExpectedVersion::from_loaded(Version(0)), ExpectedVersion::NoStream);
        assert_eq!(ExpectedVersion::from_loaded(Version(2)), ExpectedVersion::Exact(Version(2)));
    }
}
