//! Settings of a [`PostgresEventStore`](crate::PostgresEventStore) and the errors of setting one up.

use std::str::FromStr;
use std::time::Duration;

use composable_rust_core::url::{UrlError, UrlReader, redact};
use sqlx::postgres::PgConnectOptions;

/// Connection settings: [`PostgresConfig::new`] or [`PostgresConfig::from_url`], then the `with_*`
/// setters; every setting has a default.
///
/// ```
/// use std::time::Duration;
///
/// use composable_rust_postgres::PostgresConfig;
///
/// let config = PostgresConfig::from_url("postgres://app:secret@db:5432/shop")?.with_max_connections(32).with_statement_timeout(Duration::from_secs(5));
/// assert_eq!(config.max_connections(), 32);
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), composable_rust_postgres::PostgresError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    url: String,
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    max_appends_per_statement: usize,
    group_statements_in_flight: usize,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_appends_per_statement", &self.max_appends_per_statement)
            .field("group_statements_in_flight", &self.group_statements_in_flight)
            .finish()
    }
}

impl PostgresConfig {
    /// Defaults for `url` (`postgres://user:password@host:port/database`, checked on connect): 16
    /// connections, 5 s acquire timeout, 10 s statement timeout, groups of up to 64 appends with 2
    /// group statements in flight.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            max_appends_per_statement: 64,
            group_statements_in_flight: 2,
        }
    }

    /// Defaults for a PostgreSQL URL, `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (or
    /// `postgresql://...`, with sqlx's query options), checked now. The URL the `composable-rust`
    /// facade's `store::connect` takes for PostgreSQL.
    pub fn from_url(url: &str) -> Result<Self, PostgresError> {
        let config = Self::new(url.trim());
        config.connect_options()?;
        Ok(config)
    }

    /// The URL's connection options: the one check of a PostgreSQL URL.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, PostgresError> {
        let r = UrlReader::new(&self.url);
        let (scheme, rest) = r.scheme(&["postgres", "postgresql"])?;
        let expected = format!("{scheme}://USER[:PASSWORD]@HOST[:PORT]/DATABASE");
        let authority = r.authority(rest, &expected)?;
        if authority.is_empty() {
            return Err(r.error(authority, format!("nothing after {scheme}://: expected {expected}")).into());
        }
        PgConnectOptions::from_str(&self.url).map_err(|e| r.error(&self.url, e.to_string()).into())
    }

    /// The URL (with its password: print it with care).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool size.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Sets the pool size (at least 1).
    #[must_use]
    pub fn with_max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// How long to wait for a pooled connection.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Sets how long to wait for a pooled connection.
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The `statement_timeout` of every connection.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// Sets the `statement_timeout` of every connection.
    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Group commit: at most this many concurrent appends (to distinct streams) are written by one
    /// statement; `1` writes every append on its own. See the crate docs.
    pub fn max_appends_per_statement(&self) -> usize {
        self.max_appends_per_statement
    }

    /// Sets the most appends one group statement writes (`1`: group commit off).
    #[must_use]
    pub fn with_max_appends_per_statement(mut self, appends: usize) -> Self {
        self.max_appends_per_statement = appends.max(1);
        self
    }

    /// Group commit: how many group statements run at once; appends arriving meanwhile wait and form
    /// the next groups.
    pub fn group_statements_in_flight(&self) -> usize {
        self.group_statements_in_flight
    }

    /// Sets how many group statements run at once (at least 1).
    #[must_use]
    pub fn with_group_statements_in_flight(mut self, statements: usize) -> Self {
        self.group_statements_in_flight = statements.max(1);
        self
    }
}

/// Why the store could not be set up. New variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The URL is not a PostgreSQL URL.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(#[source] UrlError),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {host}:{port}: {reason}; is the server running and the URL right?")]
    Unreachable {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// The schema could not be created.
    #[error("cannot create the event store schema: {reason}")]
    Migrate {
        /// Why.
        reason: String,
    },
}

impl From<UrlError> for PostgresError {
    fn from(e: UrlError) -> Self {
        PostgresError::InvalidUrl(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> UrlError {
        match PostgresConfig::from_url(url) {
            Err(PostgresError::InvalidUrl(e)) => e,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn urls_are_checked_once() {
        PostgresConfig::from_url("postgres://app@db:5432/shop").unwrap();
        PostgresConfig::from_url("postgresql://app@db/shop").unwrap();
        assert_eq!(refused("postgres:db").part, "postgres:db");
        assert_eq!(refused("postgres://").part, "");
        assert_eq!(refused("mysql://h/db").part, "mysql");
        assert_eq!(refused("postgres://app:pw@h:notaport/db").url, "postgres://app:***@h:notaport/db", "passwords stay hidden");
        assert!(matches!(PostgresConfig::new("mysql://nope").connect_options(), Err(PostgresError::InvalidUrl(_))));
    }
}
