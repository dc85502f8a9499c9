//! How the bus's Zenoh session is set up: embedded (no network at all), peer mode with explicit
//! endpoints, or a Zenoh configuration file.

use std::path::PathBuf;

/// Default number of samples a subscription buffers before it reports [`Lagged`](composable_rust_core::EventBusError::Lagged).
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 64 * 1024;

/// Errors setting up the Zenoh session.
#[derive(Debug, thiserror::Error)]
pub enum ZenohError {
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

/// Where the session's settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Settings of a [`ZenohEventBus`](crate::ZenohEventBus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZenohConfig {
    /// Session setup.
    pub mode: ZenohMode,
    /// Samples buffered per subscription before it reports lag (the bus never blocks Zenoh's threads).
    pub subscriber_capacity: usize,
    /// Publisher side: how many of its latest published events this bus keeps and serves to
    /// subscribers that ask for history (0, the default: none).
    pub history: usize,
    /// Subscriber side: on `subscribe`, ask every reachable bus that keeps history for its retained
    /// events matching the subscription, before and together with live ones.
    pub replay_history: bool,
}

impl Default for ZenohConfig {
    fn default() -> Self {
        Self::embedded()
    }
}

impl ZenohConfig {
    /// An embedded session: zero network activity.
    pub fn embedded() -> Self {
        Self { mode: ZenohMode::Embedded, subscriber_capacity: DEFAULT_SUBSCRIBER_CAPACITY, history: 0, replay_history: false }
    }

    /// A peer with no endpoints yet; add them with [`listen`](Self::listen) and
    /// [`connect`](Self::connect).
    pub fn peer() -> Self {
        Self {
            mode: ZenohMode::Peer { listen: Vec::new(), connect: Vec::new() },
            subscriber_capacity: DEFAULT_SUBSCRIBER_CAPACITY,
            history: 0,
            replay_history: false,
        }
    }

    /// Settings from a Zenoh configuration file.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self { mode: ZenohMode::File(path.into()), subscriber_capacity: DEFAULT_SUBSCRIBER_CAPACITY, history: 0, replay_history: false }
    }

    /// Adds a listen endpoint (switches an embedded configuration to peer mode).
    #[must_use]
    pub fn listen(mut self, endpoint: impl Into<String>) -> Self {
        self.peer_endpoints().0.push(endpoint.into());
        self
    }

    /// Adds a peer to connect to (switches an embedded configuration to peer mode).
    #[must_use]
    pub fn connect(mut self, endpoint: impl Into<String>) -> Self {
        self.peer_endpoints().1.push(endpoint.into());
        self
    }

    /// Sets [`subscriber_capacity`](Self::subscriber_capacity).
    #[must_use]
    pub fn subscriber_capacity(mut self, capacity: usize) -> Self {
        self.subscriber_capacity = capacity.max(1);
        self
    }

    /// Keeps the latest `events` published events for late subscribers ([`history`](Self::history)).
    #[must_use]
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// Asks for retained history on every subscribe ([`replay_history`](Self::replay_history)).
    #[must_use]
    pub fn replay_history(mut self, on: bool) -> Self {
        self.replay_history = on;
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

    /// Builds the Zenoh configuration.
    pub fn to_zenoh(&self) -> Result<zenoh::Config, ZenohError> {
        let (listen, connect) = match &self.mode {
            ZenohMode::File(path) => {
                return zenoh::Config::from_file(path).map_err(|e| ZenohError::ConfigFile { path: path.clone(), reason: e.to_string() });
            }
            ZenohMode::Embedded => (Vec::new(), Vec::new()),
            ZenohMode::Peer { listen, connect } => (listen.clone(), connect.clone()),
        };
        for endpoint in listen.iter().chain(&connect) {
            validate_endpoint(endpoint)?;
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
/// as an opaque session failure.
fn validate_endpoint(endpoint: &str) -> Result<(), ZenohError> {
    let invalid = |reason: &str| ZenohError::InvalidEndpoint { endpoint: endpoint.to_owned(), reason: reason.to_owned() };
    let (proto, address) = endpoint.split_once('/').ok_or_else(|| invalid("missing the protocol, like tcp/"))?;
    if proto != "tcp" {
        return Err(invalid("only tcp endpoints are compiled into this bus"));
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(|| invalid("missing :PORT"))?;
    if host.is_empty() {
        return Err(invalid("missing the host"));
    }
    port.parse::<u16>().map_err(|_| invalid("the port is not a number between 0 and 65535"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        for bad in ["127.0.0.1:7447", "udp/127.0.0.1:1", "tcp/127.0.0.1", "tcp/:1", "tcp/h:99999"] {
            let err = ZenohConfig::peer().listen(bad).to_zenoh().unwrap_err();
            assert!(matches!(err, ZenohError::InvalidEndpoint { .. }), "{bad}: {err}");
        }
        ZenohConfig::peer().listen("tcp/127.0.0.1:0").connect("tcp/localhost:7447").to_zenoh().unwrap();
    }

    #[test]
    fn embedded_is_peer_mode_with_nothing_open() {
        let config = ZenohConfig::embedded().to_zenoh().unwrap();
        assert_eq!(config.get_json("listen/endpoints").unwrap(), "[]");
        assert_eq!(config.get_json("connect/endpoints").unwrap(), "[]");
        assert_eq!(config.get_json("scouting/multicast/enabled").unwrap(), "false");
        assert_eq!(config.get_json("scouting/gossip/enabled").unwrap(), "false");
    }

    #[test]
    fn a_missing_config_file_is_a_clear_error() {
        let err = ZenohConfig::from_file("/nonexistent/zenoh.json5").to_zenoh().unwrap_err();
        assert!(matches!(err, ZenohError::ConfigFile { .. }), "{err}");
    }
}
