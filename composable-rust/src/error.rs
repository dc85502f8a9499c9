//! [`ConnectError`]: why a bus or store URL could not be connected.

use std::fmt;

/// What a URL was meant to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// An event bus ([`crate::bus`]).
    Bus,
    /// An event store ([`crate::store`]).
    Store,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Bus => "event bus",
            Target::Store => "event store",
        })
    }
}

/// The error a backend gave while connecting, kept as the [`ConnectError::Connect`] source.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`crate::bus::connect`] or [`crate::store::connect`] (or their `from_env` forms) failed.
///
/// The URLs this crate puts in these errors have their passwords replaced by `***` (user info, and
/// query values whose key names a password, secret or token). A backend's own error, the source of
/// [`ConnectError::Connect`] and shown after it, is the backend's message as it is: the NATS bus's
/// repeats the server URL it was given. New variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No backend has this scheme. `known` lists the schemes of this kind of URL, compiled in or not.
    #[error("unknown {target} URL scheme {scheme:?} in {url:?}: use one of {}", known.iter().map(|s| format!("{s}:")).collect::<Vec<_>>().join(", "))]
    UnknownScheme {
        /// Bus or store.
        target: Target,
        /// The URL (passwords hidden).
        url: String,
        /// The scheme found (the text before the first `:`, or the whole URL).
        scheme: String,
        /// The schemes of this kind of URL.
        known: &'static [&'static str],
    },
    /// The scheme is known but its backend is not compiled in: enable the cargo feature named.
    #[error(
        "{target} URL {url:?} needs the `{feature}` cargo feature of composable-rust, which this build does not enable: add it, e.g. composable-rust = {{ version = \"0.1\", features = [\"{feature}\"] }}"
    )]
    FeatureDisabled {
        /// Bus or store.
        target: Target,
        /// The URL (passwords hidden).
        url: String,
        /// The scheme.
        scheme: String,
        /// The cargo feature that compiles its backend in.
        feature: &'static str,
    },
    /// The URL is not well-formed for its scheme: `part` is the offending piece (a query pair, a host,
    /// an endpoint), `reason` says what is wrong with it and what was expected.
    #[error("malformed {target} URL {url:?}: {part:?}: {reason}")]
    Malformed {
        /// Bus or store.
        target: Target,
        /// The URL (passwords hidden).
        url: String,
        /// The offending part of the URL.
        part: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// The URL is well-formed but connecting (or setting up: creating a stream, migrating a schema)
    /// failed. The backend's error is the [`source`](std::error::Error::source).
    #[error("cannot connect the {target} at {url}: {source}")]
    Connect {
        /// Bus or store.
        target: Target,
        /// The URL (passwords hidden).
        url: String,
        /// The backend (`nats`, `postgres`, ...).
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The environment variable that should hold the URL is not set (or empty, or not UTF-8).
    #[error("{var} is not set: set it to an {target} URL, e.g. {var}={example}")]
    NotSet {
        /// Bus or store.
        target: Target,
        /// The variable (`COMPOSABLE_BUS_URL` or `COMPOSABLE_STORE_URL`).
        var: &'static str,
        /// An example value.
        example: &'static str,
    },
}

impl ConnectError {
    /// Bus or store.
    pub fn target(&self) -> Target {
        match self {
            ConnectError::UnknownScheme { target, .. }
            | ConnectError::FeatureDisabled { target, .. }
            | ConnectError::Malformed { target, .. }
            | ConnectError::Connect { target, .. }
            | ConnectError::NotSet { target, .. } => *target,
        }
    }

    /// Whether retrying the same URL later may succeed (only a failed connection may).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Connect { .. })
    }
}
