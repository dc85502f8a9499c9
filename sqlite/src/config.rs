//! Settings of a [`SqliteEventStore`](crate::SqliteEventStore) and the errors of opening one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use composable_rust_core::url::{UrlError, UrlReader};

/// Why the store could not be opened. New variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The URL is not a SQLite URL, or names no database.
    #[error("invalid SQLite URL: {0}")]
    InvalidUrl(#[source] UrlError),
    /// The path names no database. An empty SQLite file name would open a temporary database of its
    /// own for every connection: appends would not be readable back, so it is refused.
    #[error("{url:?} names no SQLite database file: use sqlite:PATH for a file, or sqlite::memory: for a private in-memory store")]
    EmptyPath {
        /// The path as given.
        url: String,
    },
    /// The file could not be opened or created.
    #[error("cannot open SQLite database {path}: {reason}; check that the directory exists and is writable")]
    Open {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The schema could not be applied.
    #[error("cannot apply the event store schema to {path}: {reason}")]
    Migrate {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

impl From<UrlError> for SqliteError {
    fn from(e: UrlError) -> Self {
        SqliteError::InvalidUrl(e)
    }
}

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A file, created if missing.
    File(PathBuf),
    /// A private in-memory database, new on every open.
    Memory,
}

/// Settings of a [`SqliteEventStore`](crate::SqliteEventStore): [`SqliteConfig::new`],
/// [`SqliteConfig::in_memory`] or [`SqliteConfig::from_url`], then the `with_*` setters; every
/// setting has a default.
///
/// ```
/// use std::time::Duration;
///
/// use composable_rust_sqlite::SqliteConfig;
///
/// let config = SqliteConfig::from_url("sqlite:/var/lib/shop/events.db")?.with_busy_timeout(Duration::from_secs(1));
/// assert_eq!(config.path().map(|p| p.display().to_string()).as_deref(), Some("/var/lib/shop/events.db"));
/// assert!(SqliteConfig::from_url("sqlite::memory:")?.path().is_none());
/// # Ok::<(), composable_rust_sqlite::SqliteError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    location: Location,
    busy_timeout: Duration,
    reader_connections: u32,
    max_group: usize,
}

/// The default of [`SqliteConfig::max_group`].
const DEFAULT_MAX_GROUP: usize = 64;

impl SqliteConfig {
    /// The database file at `path` (created if missing, with its schema); the path `:memory:` is
    /// [`SqliteConfig::in_memory`]. Defaults: a 5 s busy timeout, 4 reader connections, groups of
    /// up to 64 writes per transaction ([`SqliteConfig::with_max_group`]).
    pub fn new(path: impl AsRef<Path>) -> Self {
        if path.as_ref() == Path::new(":memory:") {
            return Self::in_memory();
        }
        Self { location: Location::File(path.as_ref().to_path_buf()), ..Self::in_memory() }
    }

    /// A private in-memory database, new for every store opened with this configuration.
    pub fn in_memory() -> Self {
        Self { location: Location::Memory, busy_timeout: Duration::from_secs(5), reader_connections: 4, max_group: DEFAULT_MAX_GROUP }
    }

    /// The database of a composable-rust SQLite URL: `sqlite:PATH` (or `sqlite://PATH`) for a file,
    /// `sqlite::memory:` (or `sqlite://:memory:`) for a private in-memory database. The URL the
    /// `composable-rust` facade's `store::connect` takes for SQLite.
    pub fn from_url(url: &str) -> Result<Self, SqliteError> {
        let url = url.trim();
        let r = UrlReader::new(url);
        let (_, rest) = r.scheme(&["sqlite"])?;
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(r
                .error("", "no path: names no SQLite database file; use sqlite:PATH for a file, or sqlite::memory: for a private in-memory store")
                .into());
        }
        Ok(Self::new(path))
    }

    /// The database file; `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(path) => Some(path),
            Location::Memory => None,
        }
    }

    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    /// How long a connection waits for a lock held by another connection or process.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// Sets how long a connection waits for a lock held by another connection or process.
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Read-only connections beside the single writer (a file only: an in-memory database has one
    /// connection).
    pub fn reader_connections(&self) -> u32 {
        self.reader_connections
    }

    /// Sets the read-only connections beside the single writer (at least 1).
    #[must_use]
    pub fn with_reader_connections(mut self, connections: u32) -> Self {
        self.reader_connections = connections.max(1);
        self
    }

    /// Group commit: at most this many writes (appends and `mark_published` calls) share one
    /// transaction, and so one fsync. Concurrent appends to different streams that arrive while a
    /// transaction is being written are combined into the next one, each keeping its own
    /// expected-version check and result; a lone write is committed at once (no timer). `1` turns
    /// group commit off: every write is a transaction of its own, as before group commit.
    pub fn max_group(&self) -> usize {
        self.max_group
    }

    /// Sets the most writes one transaction carries (at least 1; `1` turns group commit off).
    ///
    /// ```
    /// use composable_rust_sqlite::SqliteConfig;
    ///
    /// assert_eq!(SqliteConfig::new("events.db").max_group(), 64);
    /// assert_eq!(SqliteConfig::new("events.db").with_max_group(0).max_group(), 1, "at least one");
    /// ```
    #[must_use]
    pub fn with_max_group(mut self, writes: usize) -> Self {
        self.max_group = writes.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_or_memory() {
        assert_eq!(SqliteConfig::from_url("sqlite:/tmp/x.db").unwrap(), SqliteConfig::new("/tmp/x.db"));
        assert_eq!(SqliteConfig::from_url("sqlite:///tmp/x.db").unwrap(), SqliteConfig::new("/tmp/x.db"));
        assert_eq!(SqliteConfig::from_url("sqlite:relative.db").unwrap(), SqliteConfig::new("relative.db"));
        for memory in ["sqlite::memory:", "sqlite://:memory:"] {
            assert_eq!(SqliteConfig::from_url(memory).unwrap(), SqliteConfig::in_memory(), "{memory}");
        }
        for bad in ["sqlite:", "sqlite://", "postgres://h/db"] {
            assert!(matches!(SqliteConfig::from_url(bad), Err(SqliteError::InvalidUrl(_))), "{bad}");
        }
        let Err(SqliteError::InvalidUrl(e)) = SqliteConfig::from_url("sqlite:") else { panic!() };
        assert!(e.part.is_empty() && e.reason.contains("names no SQLite database file"), "{e}");
    }
}
