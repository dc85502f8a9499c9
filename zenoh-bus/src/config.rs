//! How the bus's Zenoh session is set up: embedded (no network at all), peer mode with explicit
//! endpoints, or a Zenoh configuration file.

use std::path::PathBuf;
use std::sync::Arc;

use composable_rust_core::dead_letter::{DeadLetterSink, InMemoryDeadLetters};
use composable_rust_core::url::{UrlError, UrlReader, split_query};

/// Default number of samples a subscription buffers before it reports [`Lagged`](composable_rust_core::EventBusError::Lagged).
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 64 * 1024;

/// Errors setting up the Zenoh session. New variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZenohError {
    /// The URL is not a Zenoh URL.
    #[error("invalid Zenoh URL: {0}")]
    InvalidUrl(#[source] UrlError),
    /// An endpoint is not of the form `tcp/HOST:PORT`.
    #[error("invalid Zenoh endpoint {endpoint:?}: {reason} (expected e.g. tcp/127.0.0.1:7447)")]
    InvalidEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("cannot load Zenoh configuration {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A configuration value was refused by Zenoh.
    #[error("invalid Zenoh configuration {key}={value}: {reason}")]
    Config {
        /// The configuration key.
        key: String,
        /// The value.
        value: String,
        /// Zenoh's explanation.
        reason: String,
    },
    /// The session could not be opened (a listen port in use, an unreachable connect endpoint...).
    #[error("cannot open the Zenoh session: {reason}; check that listen ports are free and connect endpoints are reachable")]
    Open {
        /// Zenoh's explanation.
        reason: String,
    },
}

impl From<UrlError> for ZenohError {
    fn from(e: UrlError) -> Self {
        ZenohError::InvalidUrl(e)
    }
}

/// Where the session's settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZenohMode {
    /// In-process only: no listening or connecting endpoints, multicast and gossip scouting off.
    /// Nothing goes on the network.
    Embedded,
    /// A peer on explicit endpoints (`tcp/127.0.0.1:7447`), scouting off so only the named peers meet.
    Peer {
        /// Endpoints to listen on.
        listen: Vec<String>,
        /// Endpoints of peers to connect to.
        connect: Vec<String>,
    },
    /// A Zenoh JSON5 configuration file, used as it is.
    File(PathBuf),
}

/// Settings of a [`ZenohEventBus`](crate::ZenohEventBus): [`ZenohConfig::embedded`],
/// [`ZenohConfig::peer`], [`ZenohConfig::from_file`] or [`ZenohConfig::from_url`], then the `with_*`
/// setters; every setting has a default.
///
/// ```
/// use composable_rust_zenoh::{ZenohConfig, ZenohMode};
///
/// let config = ZenohConfig::peer().with_listen("tcp/127.0.0.1:7447").with_history(100);
/// assert_eq!(config, ZenohConfig::from_url("zenoh:peer?listen=tcp/127.0.0.1:7447&history=100")?);
/// assert!(matches!(config.mode(), ZenohMode::Peer { listen, .. } if listen.len() == 1));
/// # Ok::<(), composable_rust_zenoh::ZenohError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ZenohConfig {
    mode: ZenohMode,
    subscriber_capacity: usize,
    history: usize,
    replay_history: bool,
    dead_letters: Arc<dyn DeadLetterSink>,
}

impl std::fmt::Debug for ZenohConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohConfig")
            .field("mode", &self.mode)
            .field("subscriber_capacity", &self.subscriber_capacity)
            .field("history", &self.history)
            .field("replay_history", &self.replay_history)
            .finish_non_exhaustive()
    }
}

/// Equal when the settings are (the dead-letter sink is not compared).
impl PartialEq for ZenohConfig {
    fn eq(&self, other: &Self) -> bool {
        (&self.mode, self.subscriber_capacity, self.history, self.replay_history)
            == (&other.mode, other.subscriber_capacity, other.history, other.replay_history)
    }
}

impl Eq for ZenohConfig {}

impl Default for ZenohConfig {
    fn default() -> Self {
        Self::embedded()
    }
}

impl ZenohConfig {
    fn with_mode(mode: ZenohMode) -> Self {
        Self {
            mode,
            subscriber_capacity: DEFAULT_SUBSCRIBER_CAPACITY,
            history: 0,
            replay_history: false,
            dead_letters: Arc::new(InMemoryDeadLetters::default()),
        }
    }

    /// An embedded session: zero network activity. Subscriptions buffer
    /// [`DEFAULT_SUBSCRIBER_CAPACITY`] samples, no history is kept or asked for, dead letters are
    /// kept by a new bounded [`InMemoryDeadLetters`].
    pub fn embedded() -> Self {
        Self::with_mode(ZenohMode::Embedded)
    }

    /// A peer with no endpoints yet (the defaults of [`embedded`](Self::embedded) otherwise); add
    /// them with [`with_listen`](Self::with_listen) and [`with_connect`](Self::with_connect).
    pub fn peer() -> Self {
        Self::with_mode(ZenohMode::Peer { listen: Vec::new(), connect: Vec::new() })
    }

    /// Settings from a Zenoh configuration file (the defaults of [`embedded`](Self::embedded)
    /// otherwise).
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self::with_mode(ZenohMode::File(path.into()))
    }

    /// Settings from a composable-rust Zenoh URL: `zenoh:` (or `zenoh`, `zenoh:embedded`) for an
    /// embedded session, `zenoh:peer?listen=ENDPOINT&connect=ENDPOINT` for a peer (`listen` and
    /// `connect` repeat, endpoints as `tcp/HOST:PORT`), both taking `capacity=N`
    /// ([`with_subscriber_capacity`](Self::with_subscriber_capacity)), `history=N` and
    /// `replay_history=true`. The URL the `composable-rust` facade's `bus::connect` takes for Zenoh.
    pub fn from_url(url: &str) -> Result<Self, ZenohError> {
        let url = url.trim();
        let r = UrlReader::new(url);
        let (_, rest) = r.scheme(&["zenoh"])?;
        let (base, query) = split_query(rest);
        let mut config = match base {
            "" | "embedded" => Self::embedded(),
            "peer" => Self::peer(),
            other => return Err(r.error(other, "expected zenoh: (embedded) or zenoh:peer?listen=ENDPOINT&connect=ENDPOINT").into()),
        };
        let peer = base == "peer";
        for (key, value) in r.pairs(query, &["listen", "connect", "capacity", "history", "replay_history"])? {
            match key.as_str() {
                "listen" | "connect" if !peer => {
                    return Err(r.error(&format!("{key}={value}"), "an embedded session opens no endpoints: use zenoh:peer?listen=...&connect=...").into());
                }
                "listen" | "connect" => {
                    check_endpoint(&value).map_err(|reason| r.error(&value, format!("{reason} (expected e.g. tcp/127.0.0.1:7447)")))?;
                    config = if key == "listen" { config.with_listen(value) } else { config.with_connect(value) };
                }
                "capacity" => config = config.with_subscriber_capacity(r.count(&key, &value)?),
                "history" => config = config.with_history(r.count(&key, &value)?),
                _ => config = config.with_replay_history(r.flag(&key, &value)?),
            }
        }
        if matches!(&config.mode, ZenohMode::Peer { listen, connect } if listen.is_empty() && connect.is_empty()) {
            return Err(r.error("peer", "a peer needs at least one listen=ENDPOINT or connect=ENDPOINT, e.g. zenoh:peer?listen=tcp/127.0.0.1:7447").into());
        }
        Ok(config)
    }

    /// Session setup.
    pub fn mode(&self) -> &ZenohMode {
        &self.mode
    }

    /// Adds a listen endpoint (switches an embedded configuration to peer mode).
    #[must_use]
    pub fn with_listen(mut self, endpoint: impl Into<String>) -> Self {
        self.peer_endpoints().0.push(endpoint.into());
        self
    }

    /// Adds a peer to connect to (switches an embedded configuration to peer mode).
    #[must_use]
    pub fn with_connect(mut self, endpoint: impl Into<String>) -> Self {
        self.peer_endpoints().1.push(endpoint.into());
        self
    }

    /// Samples buffered per subscription before it reports lag (the bus never blocks Zenoh's threads).
    pub fn subscriber_capacity(&self) -> usize {
        self.subscriber_capacity
    }

    /// Sets the samples buffered per subscription (at least 1).
    #[must_use]
    pub fn with_subscriber_capacity(mut self, capacity: usize) -> Self {
        self.subscriber_capacity = capacity.max(1);
        self
    }

    /// Publisher side: how many of its latest published events this bus keeps and serves to
    /// subscribers that ask for history (0, the default: none).
    pub fn history(&self) -> usize {
        self.history
    }

    /// Keeps the latest `events` published events for late subscribers.
    #[must_use]
    pub fn with_history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// Subscriber side: whether `subscribe` asks every reachable bus that keeps history for its
    /// retained events matching the subscription, before and together with live ones.
    pub fn replay_history(&self) -> bool {
        self.replay_history
    }

    /// Asks for retained history on every subscribe, or not.
    #[must_use]
    pub fn with_replay_history(mut self, on: bool) -> Self {
        self.replay_history = on;
        self
    }

    /// Where the bus records the samples it could not deliver (not composable-rust events).
    pub fn dead_letter_sink(&self) -> &Arc<dyn DeadLetterSink> {
        &self.dead_letters
    }

    /// Records the samples the bus could not deliver (not composable-rust events) in `sink`: give it
    /// the runtime's sink (`Executor::builder().dead_letters(..)`) to keep one record.
    #[must_use]
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = sink;
        self
    }

    fn peer_endpoints(&mut self) -> (&mut Vec<String>, &mut Vec<String>) {
        if !matches!(self.mode, ZenohMode::Peer { .. }) {
            self.mode = ZenohMode::Peer { listen: Vec::new(), connect: Vec::new() };
        }
        match &mut self.mode {
            ZenohMode::Peer { listen, connect } => (listen, connect),
            _ => unreachable!("just set to peer mode"),
        }
    }

    /// **Escape hatch**: the Zenoh configuration of the session this bus opens, to open one the same
    /// way (benchmarks, tools). Using it ties your code to the zenoh version this crate depends on;
    /// everything else in this crate's API is free of it.
    pub fn raw_zenoh_config(&self) -> Result<zenoh::Config, ZenohError> {
        let (listen, connect) = match &self.mode {
            ZenohMode::File(path) => {
                return zenoh::Config::from_file(path).map_err(|e| ZenohError::ConfigFile { path: path.clone(), reason: e.to_string() });
            }
            ZenohMode::Embedded => (Vec::new(), Vec::new()),
            ZenohMode::Peer { listen, connect } => (listen.clone(), connect.clone()),
        };
        for endpoint in listen.iter().chain(&connect) {
            check_endpoint(endpoint).map_err(|reason| ZenohError::InvalidEndpoint { endpoint: endpoint.clone(), reason: reason.to_owned() })?;
        }
        let mut config = zenoh::Config::default();
        let json_list = |items: &[String]| format!("[{}]", items.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(","));
        let settings = [
            ("mode", "\"peer\"".to_owned()),
            ("listen/endpoints", json_list(&listen)),
            ("connect/endpoints", json_list(&connect)),
            ("scouting/multicast/enabled", "false".to_owned()),
            ("scouting/gossip/enabled", "false".to_owned()),
        ];
        for (key, value) in settings {
            config.insert_json5(key, &value).map_err(|e| ZenohError::Config { key: key.into(), value: value.clone(), reason: e.to_string() })?;
        }
        Ok(config)
    }
}

/// Checks the `proto/address` shape early, so a typo is reported with the endpoint named instead of
/// as an opaque session failure; the reason when it is wrong.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let (proto, address) = endpoint.split_once('/').ok_or("missing the protocol, like tcp/")?;
    if proto != "tcp" {
        return Err("only tcp endpoints are compiled into this bus");
    }
    let (host, port) = address.rsplit_once(':').ok_or("missing :PORT")?;
    if host.is_empty() {
        return Err("missing the host");
    }
    port.parse::<u16>().map_err(|_| "the port is not a number between 0 and 65535")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        for bad in ["127.0.0.1:7447", "udp/127.0.0.1:1", "tcp/127.0.0.1", "tcp/:1", "tcp/h:99999"] {
            let err = ZenohConfig::peer().with_listen(bad).raw_zenoh_config().unwrap_err();
            assert!(matches!(err, ZenohError::InvalidEndpoint { .. }), "{bad}: {err}");
        }
        ZenohConfig::peer().with_listen("tcp/127.0.0.1:0").with_connect("tcp/localhost:7447").raw_zenoh_config().unwrap();
    }

    #[test]
    fn embedded_is_peer_mode_with_nothing_open() {
        let config = ZenohConfig::embedded().raw_zenoh_config().unwrap();
        assert_eq!(config.get_json("listen/endpoints").unwrap(), "[]");
        assert_eq!(config.get_json("connect/endpoints").unwrap(), "[]");
        assert_eq!(config.get_json("scouting/multicast/enabled").unwrap(), "false");
        assert_eq!(config.get_json("scouting/gossip/enabled").unwrap(), "false");
    }

    #[test]
    fn a_missing_config_file_is_a_clear_error() {
        let err = ZenohConfig::from_file("/nonexistent/zenoh.json5").raw_zenoh_config().unwrap_err();
        assert!(matches!(err, ZenohError::ConfigFile { .. }), "{err}");
    }

    fn refused(url: &str) -> UrlError {
        match ZenohConfig::from_url(url) {
            Err(ZenohError::InvalidUrl(e)) => e,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn urls_give_the_mode_and_the_settings() {
        assert_eq!(ZenohConfig::from_url("zenoh").unwrap(), ZenohConfig::embedded());
        assert_eq!(ZenohConfig::from_url("zenoh:").unwrap(), ZenohConfig::embedded());
        assert_eq!(ZenohConfig::from_url("zenoh:embedded?capacity=5").unwrap(), ZenohConfig::embedded().with_subscriber_capacity(5));
        let peer = ZenohConfig::from_url("zenoh:peer?listen=tcp/127.0.0.1:7447&connect=tcp/h:1&connect=tcp/h:2&history=10&replay_history=true").unwrap();
        let expected =
            ZenohConfig::peer().with_listen("tcp/127.0.0.1:7447").with_connect("tcp/h:1").with_connect("tcp/h:2").with_history(10).with_replay_history(true);
        assert_eq!(peer, expected);
    }

    #[test]
    fn malformed_urls_point_at_the_bad_part() {
        assert_eq!(refused("zenoh:router").part, "router");
        assert_eq!(refused("zenoh:?listen=tcp/h:1").part, "listen=tcp/h:1");
        assert_eq!(refused("zenoh:peer").part, "peer");
        assert_eq!(refused("zenoh:peer?listen=tcp/h:1&replay_history=maybe").part, "replay_history=maybe");
        assert_eq!(refused("zenoh:peer?listen=tcp%2").part, "listen=tcp%2");
        let bad_endpoint = refused("zenoh:peer?connect=127.0.0.1:7447");
        assert_eq!(
            (bad_endpoint.part.as_str(), bad_endpoint.reason.as_str()),
            ("127.0.0.1:7447", "missing the protocol, like tcp/ (expected e.g. tcp/127.0.0.1:7447)")
        );
        assert_eq!(refused("memory:").part, "memory");
    }
}
