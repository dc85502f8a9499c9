//! What bus and store URLs share in the facade: the feature table, errors that know the whole URL
//! (also for one side of a `dual:` URL), and the environment lookup. The URL grammar itself is
//! `composable_rust_core::url`, and each backend parses its own scheme (`NatsConfig::from_url`, ...).

use composable_rust_core::url::{UrlError, UrlReader};
pub(crate) use composable_rust_core::url::{is_secret, percent_encode, redact, scheme_of, split_query, split_scheme};
use std::ffi::OsString;

use crate::error::{ConnectError, Target};

/// A backend crate behind a cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Nats,
    Redpanda,
    Zenoh,
}

impl Backend {
    /// The cargo feature of this crate that compiles the backend in.
    pub(crate) fn feature(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Nats => "nats",
            Backend::Redpanda => "redpanda",
            Backend::Zenoh => "zenoh",
        }
    }

    /// Whether this build has the backend: the feature table [`Parser::new`] uses.
    pub(crate) fn compiled(self) -> bool {
        match self {
            Backend::Memory => cfg!(feature = "memory"),
            Backend::Sqlite => cfg!(feature = "sqlite"),
            Backend::Postgres => cfg!(feature = "postgres"),
            Backend::Nats => cfg!(feature = "nats"),
            Backend::Redpanda => cfg!(feature = "redpanda"),
            Backend::Zenoh => cfg!(feature = "zenoh"),
        }
    }
}

/// Which backends a parse may use: [`Backend::compiled`] in production, another table in the
/// parser's tests.
pub(crate) type FeatureTable = fn(Backend) -> bool;

/// Parses one bus or store URL: knows the whole URL (for errors) and the feature table. The grammar
/// (query pairs, percent-decoding, redaction) is `composable_rust_core::url`'s, the one the backends
/// parse their own URLs with.
pub(crate) struct Parser<'a> {
    pub(crate) target: Target,
    reader: UrlReader<'a>,
    features: FeatureTable,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(target: Target, url: &'a str, features: FeatureTable) -> Self {
        Self { target, reader: UrlReader::new(url), features }
    }

    /// The URL being parsed.
    pub(crate) fn url(&self) -> &'a str {
        self.reader.url()
    }

    pub(crate) fn malformed(&self, part: impl Into<String>, reason: impl Into<String>) -> ConnectError {
        ConnectError::Malformed { target: self.target, url: redact(self.url()), part: redact(&part.into()), reason: reason.into() }
    }

    /// A refusal by the URL grammar or by a backend's own URL parser, for (a part of) this URL.
    pub(crate) fn invalid(&self, error: UrlError) -> ConnectError {
        self.malformed(error.part, error.reason)
    }

    pub(crate) fn unknown(&self, scheme: &str, known: &'static [&'static str]) -> ConnectError {
        ConnectError::UnknownScheme { target: self.target, url: redact(self.url()), scheme: scheme.to_owned(), known }
    }

    /// `Ok` if `backend` is in the feature table, else [`ConnectError::FeatureDisabled`].
    pub(crate) fn require(&self, scheme: &str, backend: Backend) -> Result<(), ConnectError> {
        if (self.features)(backend) { Ok(()) } else { Err(feature_disabled(self.target, self.url(), scheme, backend)) }
    }

    /// The query pairs of `query`, each key checked against `allowed` (all keys when it is empty).
    pub(crate) fn pairs(&self, query: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ConnectError> {
        self.reader.pairs(query, allowed).map_err(|e| self.invalid(e))
    }

    /// `value` of option `key` as a positive count.
    pub(crate) fn count(&self, key: &str, value: &str) -> Result<usize, ConnectError> {
        self.reader.count(key, value).map_err(|e| self.invalid(e))
    }

    /// A backend refused the URL's address or options when connecting: a malformed URL, with the
    /// backend's own explanation.
    #[cfg_attr(not(any(feature = "redpanda", feature = "zenoh")), allow(dead_code))]
    pub(crate) fn refused(&self, part: &str, error: &dyn std::error::Error) -> ConnectError {
        self.malformed(part, error.to_string())
    }

    /// Connecting failed: the backend's error as the source.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres", feature = "nats", feature = "redpanda", feature = "zenoh")), allow(dead_code))]
    pub(crate) fn failed(&self, backend: &'static str, error: impl std::error::Error + Send + Sync + 'static) -> ConnectError {
        ConnectError::Connect { target: self.target, url: redact(self.url()), backend, source: Box::new(error) }
    }
}

/// [`ConnectError::FeatureDisabled`] for `url`.
pub(crate) fn feature_disabled(target: Target, url: &str, scheme: &str, backend: Backend) -> ConnectError {
    ConnectError::FeatureDisabled { target, url: redact(url), scheme: scheme.to_owned(), feature: backend.feature() }
}

/// The URL in environment variable `var`: [`ConnectError::NotSet`] when it is unset, empty or not
/// UTF-8. `lookup` reads the environment (a stand-in in tests).
pub(crate) fn env_url(target: Target, var: &'static str, example: &'static str, lookup: impl Fn(&str) -> Option<OsString>) -> Result<String, ConnectError> {
    match lookup(var).map(OsString::into_string) {
        Some(Ok(url)) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => Err(ConnectError::NotSet { target, var, example }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_must_hold_a_url() {
        let unset = |_: &str| None;
        let empty = |_: &str| Some(OsString::from("  "));
        let set = |var: &str| (var == "V").then(|| OsString::from(" memory: "));
        for lookup in [&unset as &dyn Fn(&str) -> Option<OsString>, &empty] {
            let err = env_url(Target::Bus, "V", "memory:", lookup).unwrap_err();
            assert!(matches!(err, ConnectError::NotSet { var: "V", .. }), "{err}");
            assert_eq!(err.to_string(), "V is not set: set it to an event bus URL, e.g. V=memory:");
        }
        assert_eq!(env_url(Target::Bus, "V", "memory:", set).unwrap(), "memory:");
    }
}
