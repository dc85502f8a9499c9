//! Event stores by URL: [`connect`], [`from_env`], and [`StoreUrl`], the parsed form.
//!
//! | URL | store | feature |
//! |---|---|---|
//! | `memory:` (or `memory`) | [`InMemoryEventStore`](composable_rust_memory::InMemoryEventStore), a new empty one | `memory` (default) |
//! | `sqlite:PATH` (or `sqlite://PATH`) | `SqliteEventStore` in the file `PATH`, created with its schema if missing | `sqlite` |
//! | `sqlite::memory:` | `SqliteEventStore` in memory, private to this store | `sqlite` |
//! | `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?...]`, `postgresql://` the same | `PostgresEventStore`; the schema is migrated on connect | `postgres` |
//!
//! SQLite and PostgreSQL URLs are read by their backends (`SqliteConfig::from_url`,
//! `PostgresConfig::from_url`, which `SqliteEventStore::connect` and `PostgresEventStore::connect`
//! use); the facade only picks the backend by scheme. PostgreSQL URLs take sqlx's options.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use composable_rust_core::EventStore;

use crate::error::{ConnectError, Target};
use crate::parse::{Backend, FeatureTable, Parser, feature_disabled, redact, scheme_of, split_scheme};

/// The environment variable [`from_env`] reads.
pub const ENV_VAR: &str = "COMPOSABLE_STORE_URL";

/// The schemes of store URLs, compiled in or not.
pub const SCHEMES: &[&str] = &["memory", "sqlite", "postgres", "postgresql"];

/// Connects the store `url` names (see the [module docs](self) for the URLs).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), composable_rust::ConnectError> {
/// let store = composable_rust::store::connect("memory:").await?;
/// assert!(store.read_all(composable_rust::GlobalPosition(0), 10).await.unwrap().is_empty());
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn EventStore>, ConnectError> {
    StoreUrl::parse(url)?.connect().await
}

/// Connects the store named by [`ENV_VAR`] (`COMPOSABLE_STORE_URL`); [`ConnectError::NotSet`] when
/// it is unset or empty.
pub async fn from_env() -> Result<Arc<dyn EventStore>, ConnectError> {
    connect(&crate::parse::env_url(Target::Store, ENV_VAR, "sqlite:events.db", |var| std::env::var_os(var))?).await
}

/// Connects the store named by [`ENV_VAR`], or `default` when it is unset or empty.
pub async fn from_env_or(default: &str) -> Result<Arc<dyn EventStore>, ConnectError> {
    let url = crate::parse::env_url(Target::Store, ENV_VAR, "sqlite:events.db", |var| std::env::var_os(var)).unwrap_or_else(|_| default.to_owned());
    connect(&url).await
}

/// A parsed store URL: what [`connect`] will connect. `Display` gives the URL back, passwords hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// `memory:`: a new in-memory store.
    Memory,
    /// `sqlite:...`: a SQLite file, or `sqlite::memory:`.
    #[non_exhaustive]
    Sqlite {
        /// The URL as given.
        url: String,
    },
    /// `postgres://...` or `postgresql://...`.
    #[non_exhaustive]
    Postgres {
        /// The URL as given.
        url: String,
    },
}

impl StoreUrl {
    /// Parses `url` (see the [module docs](self)). A scheme whose backend this build leaves out is
    /// [`ConnectError::FeatureDisabled`] already here.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        parse_with(url, Backend::compiled)
    }

    /// The URL's scheme (`memory`, `sqlite`, `postgres`).
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreUrl::Memory => "memory",
            StoreUrl::Sqlite { .. } => "sqlite",
            StoreUrl::Postgres { .. } => "postgres",
        }
    }

    /// Whether the store keeps its events after the process ends (a SQLite file, PostgreSQL).
    pub fn is_durable(&self) -> bool {
        match self {
            StoreUrl::Memory => false,
            StoreUrl::Sqlite { url } => sqlite_is_file(url),
            StoreUrl::Postgres { .. } => true,
        }
    }

    /// Connects the store (a PostgreSQL schema is created or upgraded first).
    pub async fn connect(&self) -> Result<Arc<dyn EventStore>, ConnectError> {
        let shown = self.to_string();
        let p = Parser::new(Target::Store, &shown, Backend::compiled);
        match self {
            StoreUrl::Memory => connect_memory(&p),
            StoreUrl::Sqlite { url } => connect_sqlite(&p, url).await,
            StoreUrl::Postgres { url } => connect_postgres(&p, url).await,
        }
    }
}

impl FromStr for StoreUrl {
    type Err = ConnectError;

    fn from_str(url: &str) -> Result<Self, ConnectError> {
        StoreUrl::parse(url)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory:"),
            StoreUrl::Sqlite { url } | StoreUrl::Postgres { url } => f.write_str(&redact(url)),
        }
    }
}

/// Parses `url` with `features` as the feature table.
pub(crate) fn parse_with(url: &str, features: FeatureTable) -> Result<StoreUrl, ConnectError> {
    let url = url.trim();
    let p = Parser::new(Target::Store, url, features);
    if url.is_empty() {
        return Err(p.malformed(url, "an empty URL: give one of memory:, sqlite:PATH, sqlite::memory:, postgres://USER@HOST:PORT/DATABASE"));
    }
    let Some((scheme, rest)) = split_scheme(url) else { return Err(p.unknown(&scheme_of(url), SCHEMES)) };
    match scheme.as_str() {
        "memory" => {
            p.require(&scheme, Backend::Memory)?;
            if !rest.is_empty() {
                return Err(p.malformed(rest, "memory: takes no path and no options"));
            }
            Ok(StoreUrl::Memory)
        }
        "sqlite" => {
            p.require(&scheme, Backend::Sqlite)?;
            check_sqlite(&p, url)?;
            Ok(StoreUrl::Sqlite { url: url.to_owned() })
        }
        "postgres" | "postgresql" => {
            p.require(&scheme, Backend::Postgres)?;
            check_postgres(&p, url)?;
            Ok(StoreUrl::Postgres { url: url.to_owned() })
        }
        other => Err(p.unknown(other, SCHEMES)),
    }
}

#[cfg(feature = "memory")]
#[allow(clippy::unnecessary_wraps)]
fn connect_memory(_p: &Parser<'_>) -> Result<Arc<dyn EventStore>, ConnectError> {
    Ok(Arc::new(composable_rust_memory::InMemoryEventStore::new()))
}

#[cfg(not(feature = "memory"))]
fn connect_memory(p: &Parser<'_>) -> Result<Arc<dyn EventStore>, ConnectError> {
    Err(disabled(p, "memory", Backend::Memory))
}

// sqlite: and postgres:// URLs are the backends' to read: the facade checks them with the backend's
// parser when parsing, and connects with the backend's `connect(url)`.

#[cfg(feature = "sqlite")]
fn check_sqlite(p: &Parser<'_>, url: &str) -> Result<(), ConnectError> {
    use composable_rust_sqlite::{SqliteConfig, SqliteError};
    match SqliteConfig::from_url(url) {
        Ok(_) => Ok(()),
        Err(SqliteError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e) => Err(p.malformed(url, e.to_string())),
    }
}

#[cfg(not(feature = "sqlite"))]
fn check_sqlite(p: &Parser<'_>, _url: &str) -> Result<(), ConnectError> {
    Err(disabled(p, "sqlite", Backend::Sqlite))
}

/// Whether a (well-formed) SQLite URL names a file rather than a private in-memory database.
#[cfg(feature = "sqlite")]
fn sqlite_is_file(url: &str) -> bool {
    composable_rust_sqlite::SqliteConfig::from_url(url).is_ok_and(|config| config.path().is_some())
}

/// Without the backend, no SQLite URL parses: there is nothing to ask.
#[cfg(not(feature = "sqlite"))]
fn sqlite_is_file(_url: &str) -> bool {
    false
}

#[cfg(feature = "sqlite")]
async fn connect_sqlite(p: &Parser<'_>, url: &str) -> Result<Arc<dyn EventStore>, ConnectError> {
    use composable_rust_sqlite::{SqliteError, SqliteEventStore};
    match SqliteEventStore::connect(url).await {
        Ok(store) => Ok(Arc::new(store)),
        Err(SqliteError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e) => Err(p.failed("sqlite", e)),
    }
}

#[cfg(not(feature = "sqlite"))]
#[allow(clippy::unused_async)]
async fn connect_sqlite(p: &Parser<'_>, _url: &str) -> Result<Arc<dyn EventStore>, ConnectError> {
    Err(disabled(p, "sqlite", Backend::Sqlite))
}

#[cfg(feature = "postgres")]
fn check_postgres(p: &Parser<'_>, url: &str) -> Result<(), ConnectError> {
    use composable_rust_postgres::{PostgresConfig, PostgresError};
    match PostgresConfig::from_url(url) {
        Ok(_) => Ok(()),
        Err(PostgresError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e) => Err(p.malformed(url, e.to_string())),
    }
}

#[cfg(not(feature = "postgres"))]
fn check_postgres(p: &Parser<'_>, _url: &str) -> Result<(), ConnectError> {
    Err(disabled(p, "postgres", Backend::Postgres))
}

#[cfg(feature = "postgres")]
async fn connect_postgres(p: &Parser<'_>, url: &str) -> Result<Arc<dyn EventStore>, ConnectError> {
    use composable_rust_postgres::{PostgresError, PostgresEventStore};
    let store = match PostgresEventStore::connect(url).await {
        Ok(store) => store,
        Err(PostgresError::InvalidUrl(e)) => return Err(p.invalid(e)),
        Err(e) => return Err(p.failed("postgres", e)),
    };
    store.migrate().await.map_err(|e| p.failed("postgres", e))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
#[allow(clippy::unused_async)]
async fn connect_postgres(p: &Parser<'_>, _url: &str) -> Result<Arc<dyn EventStore>, ConnectError> {
    Err(disabled(p, "postgres", Backend::Postgres))
}

/// [`ConnectError::FeatureDisabled`] for a URL built by hand (or parsed with another feature table)
/// in a build without its backend.
#[cfg_attr(all(feature = "memory", feature = "sqlite", feature = "postgres"), allow(dead_code))]
fn disabled(p: &Parser<'_>, scheme: &str, backend: Backend) -> ConnectError {
    feature_disabled(p.target, p.url(), scheme, backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: Backend) -> bool {
        true
    }

    fn none(_: Backend) -> bool {
        false
    }

    #[test]
    fn memory_urls_parse_and_print_back() {
        assert_eq!(parse_with("memory:", all).unwrap(), StoreUrl::Memory);
        assert_eq!(parse_with("memory", all).unwrap(), StoreUrl::Memory);
        assert_eq!(StoreUrl::Memory.to_string(), "memory:");
        assert!(!StoreUrl::Memory.is_durable());
    }

    /// sqlite: and postgres:// are checked by their backends (whose own tests go through the
    /// malformed cases); here, that the facade keeps the URL.
    #[test]
    #[cfg(all(feature = "sqlite", feature = "postgres"))]
    fn backend_urls_parse_and_print_back() {
        for (url, parsed) in [
            ("sqlite:/tmp/shop.db", StoreUrl::Sqlite { url: "sqlite:/tmp/shop.db".into() }),
            ("sqlite::memory:", StoreUrl::Sqlite { url: "sqlite::memory:".into() }),
            ("postgres://app@db:5432/shop", StoreUrl::Postgres { url: "postgres://app@db:5432/shop".into() }),
            ("postgresql://app@db/shop", StoreUrl::Postgres { url: "postgresql://app@db/shop".into() }),
        ] {
            assert_eq!(parse_with(url, all).unwrap(), parsed, "{url}");
        }
        assert_eq!(parse_with("postgres://app:pw@db/shop", all).unwrap().to_string(), "postgres://app:***@db/shop");
        assert!(!parse_with("sqlite::memory:", all).unwrap().is_durable());
        assert!(parse_with("sqlite:x.db", all).unwrap().is_durable());
    }

    #[test]
    fn unknown_schemes_list_the_known_ones() {
        let err = parse_with("mysql://localhost/db", all).unwrap_err();
        assert!(matches!(&err, ConnectError::UnknownScheme { scheme, target: Target::Store, .. } if scheme == "mysql"), "{err:?}");
        assert_eq!(
            err.to_string(),
            "unknown event store URL scheme \"mysql\" in \"mysql://localhost/db\": use one of memory:, sqlite:, postgres:, postgresql:"
        );
        assert!(matches!(parse_with("/tmp/x.db", all), Err(ConnectError::UnknownScheme { .. })));
    }

    #[test]
    fn a_scheme_without_its_feature_names_the_feature() {
        for (url, feature) in [("memory:", "memory"), ("sqlite::memory:", "sqlite"), ("postgres://h/db", "postgres"), ("postgresql://h/db", "postgres")] {
            match parse_with(url, none) {
                Err(ConnectError::FeatureDisabled { feature: f, target: Target::Store, .. }) => assert_eq!(f, feature, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    fn part(url: &str) -> String {
        match parse_with(url, all) {
            Err(ConnectError::Malformed { part, .. }) => part,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn malformed_urls_point_at_the_bad_part() {
        assert_eq!(part("memory:/tmp/x"), "/tmp/x");
        assert_eq!(part("  "), "");
    }

    #[test]
    #[cfg(all(feature = "sqlite", feature = "postgres"))]
    fn malformed_backend_urls_point_at_the_bad_part() {
        assert_eq!(part("postgres:db"), "postgres:db");
        assert_eq!(part("postgres://"), "");
        assert_eq!(part("sqlite:"), "");
    }
}
