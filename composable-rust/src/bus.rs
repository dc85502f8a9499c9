//! Event buses by URL: [`connect`], [`from_env`], and [`BusUrl`], the parsed form.
//!
//! | URL | bus | feature |
//! |---|---|---|
//! | `memory:` (or `memory`), `memory:?capacity=N` | [`InMemoryEventBus`](composable_rust_memory::InMemoryEventBus), keeping `N` events for slow subscribers (default 16,384) | `memory` (default) |
//! | `nats://[USER:PASSWORD@]HOST[:PORT]` | `NatsEventBus` (JetStream; the stream is created if missing) | `nats` |
//! | `redpanda://HOST:PORT[,HOST:PORT...][?KEY=VALUE&...]`, `kafka://` the same | `RedpandaEventBus`; each query pair is a librdkafka property (`batch.num.messages=1`, `security.protocol=SASL_SSL`, ...) | `redpanda` |
//! | `zenoh:` (or `zenoh`, `zenoh:embedded`) | `ZenohEventBus`, embedded: no network at all | `zenoh` |
//! | `zenoh:peer?listen=ENDPOINT&connect=ENDPOINT` | a Zenoh peer; `listen` and `connect` repeat, endpoints as `tcp/HOST:PORT` | `zenoh` |
//! | `dual:PRIMARY\|SECONDARY[\|MODE]` | [`DualEventBus`] over two of the above; `MODE` as in `DUAL_BUS_MODE` (`primary`, `dual-read-primary[:required]`, `dual-read-secondary[:required]`, `secondary`), default `dual-read-primary` | those of both sides |
//!
//! Zenoh URLs also take `capacity=N` (samples buffered per subscription, default 65,536),
//! `history=N` (events kept for late subscribers) and `replay_history=true`. Query values may be
//! percent-encoded (`%26` for `&`, `%7C` for `|`). Quote `dual:` URLs in a shell: `|` is a pipe.
//!
//! To switch a dual bus's mode while running, build it yourself from two connected buses:
//! `DualEventBus::new(connect(a).await?, connect(b).await?, mode)` keeps [`DualEventBus::set_mode`]
//! at hand.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use composable_rust_core::EventBus;
use composable_rust_core::dead_letter::DeadLetterSink;
use composable_rust_runtime::{DualEventBus, DualMode, SecondaryPolicy, Side};

use crate::error::{ConnectError, Target};
use crate::parse::{Backend, FeatureTable, Parser, feature_disabled, is_secret, percent_encode, redact, scheme_of, split_query, split_scheme};

/// Where a connected bus records its dead letters: `None` leaves each bus its default, a bounded
/// in-memory record of its own.
type Sink = Option<Arc<dyn DeadLetterSink>>;

/// The environment variable [`from_env`] reads.
pub const ENV_VAR: &str = "COMPOSABLE_BUS_URL";

/// The schemes of bus URLs, compiled in or not.
pub const SCHEMES: &[&str] = &["memory", "nats", "redpanda", "kafka", "zenoh", "dual"];

/// The mode of a `dual:` URL that names none: publish to both, read from the primary, mirror best
/// effort (the first step of a migration).
pub const DEFAULT_DUAL_MODE: DualMode = DualMode::Dual { read_from: Side::Primary, mirror: SecondaryPolicy::BestEffort };

/// Connects the bus `url` names (see the [module docs](self) for the URLs).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), composable_rust::ConnectError> {
/// let bus = composable_rust::bus::connect("memory:").await?;
/// assert_eq!(bus.backend(), "in-memory");
/// let err = composable_rust::bus::connect("mqtt://broker:1883").await.err().expect("no such scheme");
/// assert!(err.to_string().contains("use one of memory:, nats:, redpanda:, kafka:, zenoh:, dual:"));
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn EventBus>, ConnectError> {
    BusUrl::parse(url)?.connect().await
}

/// Connects the bus `url` names, recording the messages it gives up on (too many deliveries, not
/// an event) in `sink`: give it the sink of the runtime's `Executor` (`Executor::builder()
/// .dead_letters(..)`) to keep one record of everything that failed for good. The in-memory bus
/// has no dead letters (a slow subscriber is told how many events it missed instead).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), composable_rust::ConnectError> {
/// use std::sync::Arc;
///
/// use composable_rust::runtime::{Executor, InMemoryDeadLetters};
///
/// let dead_letters = Arc::new(InMemoryDeadLetters::default());
/// let bus = composable_rust::bus::connect_with_dead_letters("memory:", dead_letters.clone()).await?;
/// let executor = Executor::builder().bus(bus).dead_letters(dead_letters).build();
/// # drop(executor);
/// # Ok(()) }
/// ```
pub async fn connect_with_dead_letters(url: &str, sink: Arc<dyn DeadLetterSink>) -> Result<Arc<dyn EventBus>, ConnectError> {
    BusUrl::parse(url)?.connect_with_dead_letters(sink).await
}

/// Connects the bus named by [`ENV_VAR`] (`COMPOSABLE_BUS_URL`); [`ConnectError::NotSet`] when it
/// is unset or empty.
pub async fn from_env() -> Result<Arc<dyn EventBus>, ConnectError> {
    connect(&crate::parse::env_url(Target::Bus, ENV_VAR, "memory:", |var| std::env::var_os(var))?).await
}

/// Connects the bus named by [`ENV_VAR`], or `default` when it is unset or empty.
pub async fn from_env_or(default: &str) -> Result<Arc<dyn EventBus>, ConnectError> {
    let url = crate::parse::env_url(Target::Bus, ENV_VAR, "memory:", |var| std::env::var_os(var)).unwrap_or_else(|_| default.to_owned());
    connect(&url).await
}

/// A parsed bus URL: what [`connect`] will connect. Parse with [`BusUrl::parse`] (or `str::parse`),
/// adjust (endpoints, capacities), then [`BusUrl::connect`]. `Display` gives the URL back, passwords
/// hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusUrl {
    /// `memory:`: a new in-memory bus.
    #[non_exhaustive]
    Memory {
        /// Events kept for slow subscribers (`None`: the bus's default).
        capacity: Option<usize>,
    },
    /// `nats://...`: NATS JetStream.
    #[non_exhaustive]
    Nats {
        /// The server URL, as given.
        url: String,
    },
    /// `redpanda://...` or `kafka://...`: Redpanda or any Kafka broker.
    #[non_exhaustive]
    Kafka {
        /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
        brokers: String,
        /// librdkafka properties from the query, in order.
        properties: Vec<(String, String)>,
    },
    /// `zenoh:...`: embedded when both endpoint lists are empty, a peer otherwise.
    #[non_exhaustive]
    Zenoh {
        /// Endpoints to listen on (`tcp/HOST:PORT`).
        listen: Vec<String>,
        /// Peers to connect to.
        connect: Vec<String>,
        /// Samples buffered per subscription (`None`: the bus's default, also when the URL names it).
        capacity: Option<usize>,
        /// Published events kept for late subscribers (0: none).
        history: usize,
        /// Ask reachable peers for their history on subscribe.
        replay_history: bool,
    },
    /// `dual:PRIMARY|SECONDARY[|MODE]`: [`DualEventBus`].
    #[non_exhaustive]
    Dual {
        /// The bus migrated from.
        primary: Box<BusUrl>,
        /// The bus migrated to.
        secondary: Box<BusUrl>,
        /// Where publishes go and subscriptions read from.
        mode: DualMode,
    },
}

impl BusUrl {
    /// Parses `url` (see the [module docs](self)). A scheme whose backend this build leaves out is
    /// [`ConnectError::FeatureDisabled`] already here.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        parse_with(url, Backend::compiled)
    }

    /// `memory:` with the bus's default capacity.
    pub fn memory() -> Self {
        BusUrl::Memory { capacity: None }
    }

    /// `zenoh:`, embedded.
    pub fn zenoh_embedded() -> Self {
        BusUrl::Zenoh { listen: Vec::new(), connect: Vec::new(), capacity: None, history: 0, replay_history: false }
    }

    /// Sets the capacity of in-memory and Zenoh buses (on both sides of a dual bus) that the URL left
    /// at the default; other buses have none.
    pub fn set_default_capacity(&mut self, capacity: usize) {
        match self {
            BusUrl::Memory { capacity: c } | BusUrl::Zenoh { capacity: c, .. } => {
                c.get_or_insert(capacity.max(1));
            }
            BusUrl::Dual { primary, secondary, .. } => {
                primary.set_default_capacity(capacity);
                secondary.set_default_capacity(capacity);
            }
            BusUrl::Nats { .. } | BusUrl::Kafka { .. } => {}
        }
    }

    /// The URL's scheme (`memory`, `nats`, `redpanda`, `zenoh`, `dual`).
    pub fn scheme(&self) -> &'static str {
        match self {
            BusUrl::Memory { .. } => "memory",
            BusUrl::Nats { .. } => "nats",
            BusUrl::Kafka { .. } => "redpanda",
            BusUrl::Zenoh { .. } => "zenoh",
            BusUrl::Dual { .. } => "dual",
        }
    }

    /// Connects the bus; each backend keeps its dead letters in a bounded in-memory record of its
    /// own (see [`BusUrl::connect_with_dead_letters`]).
    pub async fn connect(&self) -> Result<Arc<dyn EventBus>, ConnectError> {
        self.connect_reporting(None).await
    }

    /// Connects the bus, recording its dead letters in `sink` (both sides' of a dual bus); see
    /// [`connect_with_dead_letters`].
    pub async fn connect_with_dead_letters(&self, sink: Arc<dyn DeadLetterSink>) -> Result<Arc<dyn EventBus>, ConnectError> {
        self.connect_reporting(Some(sink)).await
    }

    async fn connect_reporting(&self, sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
        let url = self.to_string();
        let p = Parser::new(Target::Bus, &url, Backend::compiled);
        match self {
            BusUrl::Memory { capacity } => connect_memory(&p, *capacity),
            BusUrl::Nats { url: server } => connect_nats(&p, server, sink).await,
            BusUrl::Kafka { brokers, properties } => connect_kafka(&p, brokers, properties, sink).await,
            BusUrl::Zenoh { listen, connect, capacity, history, replay_history } => {
                let settings = ZenohSettings { listen, connect, capacity: *capacity, history: *history, replay_history: *replay_history };
                connect_zenoh(&p, settings, sink).await
            }
            BusUrl::Dual { primary, secondary, mode } => {
                let primary = Box::pin(primary.connect_reporting(sink.clone())).await?;
                let secondary = Box::pin(secondary.connect_reporting(sink)).await?;
                Ok(Arc::new(DualEventBus::new(primary, secondary, *mode)))
            }
        }
    }
}

impl FromStr for BusUrl {
    type Err = ConnectError;

    fn from_str(url: &str) -> Result<Self, ConnectError> {
        BusUrl::parse(url)
    }
}

/// Writes `?k=v&k=v` (nothing when `pairs` is empty), secret values as `***`.
fn write_query<'a>(f: &mut fmt::Formatter<'_>, pairs: impl IntoIterator<Item = (&'a str, String)>) -> fmt::Result {
    let mut first = true;
    for (key, value) in pairs {
        f.write_str(if first { "?" } else { "&" })?;
        first = false;
        let value = if is_secret(key) { "***".to_owned() } else { percent_encode(&value) };
        write!(f, "{}={value}", percent_encode(key))?;
    }
    Ok(())
}

impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusUrl::Memory { capacity } => {
                f.write_str("memory:")?;
                write_query(f, capacity.map(|c| ("capacity", c.to_string())))
            }
            BusUrl::Nats { url } => f.write_str(&redact(url)),
            BusUrl::Kafka { brokers, properties } => {
                write!(f, "redpanda://{brokers}")?;
                write_query(f, properties.iter().map(|(k, v)| (k.as_str(), v.clone())))
            }
            BusUrl::Zenoh { listen, connect, capacity, history, replay_history } => {
                f.write_str(if listen.is_empty() && connect.is_empty() { "zenoh:" } else { "zenoh:peer" })?;
                let endpoints = listen.iter().map(|e| ("listen", e.clone())).chain(connect.iter().map(|e| ("connect", e.clone())));
                let options = capacity
                    .map(|c| ("capacity", c.to_string()))
                    .into_iter()
                    .chain((*history > 0).then(|| ("history", history.to_string())))
                    .chain(replay_history.then(|| ("replay_history", "true".to_owned())));
                write_query(f, endpoints.chain(options))
            }
            BusUrl::Dual { primary, secondary, mode } => write!(f, "dual:{primary}|{secondary}|{}", mode_name(*mode)),
        }
    }
}

/// A dual mode as `DualMode::from_str` reads it.
fn mode_name(mode: DualMode) -> String {
    match mode {
        DualMode::PrimaryOnly => "primary".to_owned(),
        DualMode::SecondaryOnly => "secondary".to_owned(),
        DualMode::Dual { read_from, mirror } => {
            let side = if read_from == Side::Primary { "dual-read-primary" } else { "dual-read-secondary" };
            if mirror == SecondaryPolicy::Required { format!("{side}:required") } else { side.to_owned() }
        }
    }
}

/// Parses `url` with `features` as the feature table.
pub(crate) fn parse_with(url: &str, features: FeatureTable) -> Result<BusUrl, ConnectError> {
    let p = Parser::new(Target::Bus, url, features);
    parse_part(&p, url.trim(), true)
}

/// Parses `url`, the whole URL or one side of a dual URL (`outer`: whether it may be a dual URL).
fn parse_part(p: &Parser<'_>, url: &str, outer: bool) -> Result<BusUrl, ConnectError> {
    if url.is_empty() {
        return Err(p.malformed(url, format!("an empty URL: give one of {}", SCHEMES.iter().map(|s| format!("{s}:")).collect::<Vec<_>>().join(", "))));
    }
    let Some((scheme, rest)) = split_scheme(url) else { return Err(p.unknown(&scheme_of(url), SCHEMES)) };
    match scheme.as_str() {
        "memory" => {
            p.require(&scheme, Backend::Memory)?;
            let (base, query) = split_query(rest);
            if !base.is_empty() {
                return Err(p.malformed(base, "memory: takes no path; options go in the query, e.g. memory:?capacity=65536"));
            }
            let mut capacity = None;
            for (key, value) in p.pairs(query, &["capacity"])? {
                capacity = Some(p.count(&key, &value)?);
            }
            Ok(BusUrl::Memory { capacity })
        }
        "nats" => {
            p.require(&scheme, Backend::Nats)?;
            parse_nats(p, url)
        }
        "redpanda" | "kafka" => {
            p.require(&scheme, Backend::Redpanda)?;
            parse_kafka(p, url)
        }
        "zenoh" => {
            p.require(&scheme, Backend::Zenoh)?;
            parse_zenoh(p, url)
        }
        "dual" => {
            if !outer {
                return Err(p.malformed(url, "a side of a dual bus cannot be a dual bus itself"));
            }
            let parts: Vec<&str> = rest.split('|').collect();
            let (primary, secondary, mode) = match parts[..] {
                [primary, secondary] => (primary, secondary, None),
                [primary, secondary, mode] => (primary, secondary, Some(mode)),
                _ => return Err(p.malformed(rest, "expected dual:PRIMARY|SECONDARY or dual:PRIMARY|SECONDARY|MODE")),
            };
            let primary = parse_part(p, primary.trim(), false)?;
            let secondary = parse_part(p, secondary.trim(), false)?;
            let mode = match mode.map(str::trim) {
                None => DEFAULT_DUAL_MODE,
                Some(mode) => mode.parse::<DualMode>().map_err(|e| p.malformed(mode, e.to_string()))?,
            };
            Ok(BusUrl::Dual { primary: Box::new(primary), secondary: Box::new(secondary), mode })
        }
        other => Err(p.unknown(other, SCHEMES)),
    }
}

// nats://, redpanda:// and zenoh: URLs are the backends' to parse (`NatsConfig::from_url`, ...):
// the facade only picks the backend by scheme and keeps what the backend read.

#[cfg(feature = "nats")]
fn parse_nats(p: &Parser<'_>, url: &str) -> Result<BusUrl, ConnectError> {
    use composable_rust_nats::{NatsConfig, NatsError};
    match NatsConfig::from_url(url) {
        Ok(config) => Ok(BusUrl::Nats { url: config.server_url().to_owned() }),
        Err(NatsError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e) => Err(p.malformed(url, e.to_string())),
    }
}

#[cfg(not(feature = "nats"))]
fn parse_nats(p: &Parser<'_>, _url: &str) -> Result<BusUrl, ConnectError> {
    Err(disabled(p, "nats", Backend::Nats))
}

#[cfg(feature = "redpanda")]
fn parse_kafka(p: &Parser<'_>, url: &str) -> Result<BusUrl, ConnectError> {
    use composable_rust_redpanda::{RedpandaConfig, RedpandaError};
    match RedpandaConfig::from_url(url) {
        Ok(config) => {
            Ok(BusUrl::Kafka { brokers: config.brokers().to_owned(), properties: config.properties().iter().map(|(k, v)| (k.clone(), v.clone())).collect() })
        }
        Err(RedpandaError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e) => Err(p.malformed(url, e.to_string())),
    }
}

#[cfg(not(feature = "redpanda"))]
fn parse_kafka(p: &Parser<'_>, _url: &str) -> Result<BusUrl, ConnectError> {
    Err(disabled(p, "redpanda", Backend::Redpanda))
}

#[cfg(feature = "zenoh")]
fn parse_zenoh(p: &Parser<'_>, url: &str) -> Result<BusUrl, ConnectError> {
    use composable_rust_zenoh::{DEFAULT_SUBSCRIBER_CAPACITY, ZenohConfig, ZenohError, ZenohMode};
    let config = match ZenohConfig::from_url(url) {
        Ok(config) => config,
        Err(ZenohError::InvalidUrl(e)) => return Err(p.invalid(e)),
        Err(e) => return Err(p.malformed(url, e.to_string())),
    };
    let (listen, connect) = match config.mode() {
        ZenohMode::Peer { listen, connect } => (listen.clone(), connect.clone()),
        _ => (Vec::new(), Vec::new()),
    };
    let capacity = (config.subscriber_capacity() != DEFAULT_SUBSCRIBER_CAPACITY).then_some(config.subscriber_capacity());
    Ok(BusUrl::Zenoh { listen, connect, capacity, history: config.history(), replay_history: config.replay_history() })
}

#[cfg(not(feature = "zenoh"))]
fn parse_zenoh(p: &Parser<'_>, _url: &str) -> Result<BusUrl, ConnectError> {
    Err(disabled(p, "zenoh", Backend::Zenoh))
}

/// A Zenoh URL's settings, borrowed.
#[cfg_attr(not(feature = "zenoh"), allow(dead_code))]
struct ZenohSettings<'a> {
    listen: &'a [String],
    connect: &'a [String],
    capacity: Option<usize>,
    history: usize,
    replay_history: bool,
}

#[cfg(feature = "memory")]
#[allow(clippy::unnecessary_wraps)]
fn connect_memory(_p: &Parser<'_>, capacity: Option<usize>) -> Result<Arc<dyn EventBus>, ConnectError> {
    use composable_rust_memory::{DEFAULT_CAPACITY, InMemoryEventBus};
    Ok(Arc::new(InMemoryEventBus::with_capacity(capacity.unwrap_or(DEFAULT_CAPACITY))))
}

#[cfg(not(feature = "memory"))]
fn connect_memory(p: &Parser<'_>, _capacity: Option<usize>) -> Result<Arc<dyn EventBus>, ConnectError> {
    Err(disabled(p, "memory", Backend::Memory))
}

#[cfg(feature = "nats")]
async fn connect_nats(p: &Parser<'_>, server: &str, sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
    use composable_rust_nats::{NatsConfig, NatsError, NatsEventBus};
    let mut config = NatsConfig::new(server);
    if let Some(sink) = sink {
        config = config.with_dead_letters(sink);
    }
    match NatsEventBus::connect_with(config).await {
        Ok(bus) => Ok(Arc::new(bus)),
        Err(NatsError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e) => Err(p.failed("nats", e)),
    }
}

#[cfg(not(feature = "nats"))]
#[allow(clippy::unused_async)]
async fn connect_nats(p: &Parser<'_>, _server: &str, _sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
    Err(disabled(p, "nats", Backend::Nats))
}

#[cfg(feature = "redpanda")]
async fn connect_kafka(p: &Parser<'_>, brokers: &str, properties: &[(String, String)], sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
    use composable_rust_redpanda::{RedpandaConfig, RedpandaError, RedpandaEventBus};
    let mut config = properties.iter().fold(RedpandaConfig::new(brokers), |config, (k, v)| config.with_property(k, v));
    if let Some(sink) = sink {
        config = config.with_dead_letters(sink);
    }
    match RedpandaEventBus::connect_with(config).await {
        Ok(bus) => Ok(Arc::new(bus)),
        Err(RedpandaError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(e @ RedpandaError::InvalidBrokers { .. }) => Err(p.refused(brokers, &e)),
        Err(e @ RedpandaError::Client { .. }) => {
            let query = properties.iter().map(|(k, v)| format!("{k}={}", if is_secret(k) { "***" } else { v })).collect::<Vec<_>>().join("&");
            Err(p.refused(&query, &e))
        }
        Err(e) => Err(p.failed("redpanda", e)),
    }
}

#[cfg(not(feature = "redpanda"))]
#[allow(clippy::unused_async)]
async fn connect_kafka(p: &Parser<'_>, _brokers: &str, _properties: &[(String, String)], _sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
    Err(disabled(p, "redpanda", Backend::Redpanda))
}

#[cfg(feature = "zenoh")]
async fn connect_zenoh(p: &Parser<'_>, settings: ZenohSettings<'_>, sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
    use composable_rust_zenoh::{ZenohConfig, ZenohError, ZenohEventBus};
    let mut config = settings.listen.iter().fold(ZenohConfig::embedded(), ZenohConfig::with_listen);
    config = settings.connect.iter().fold(config, ZenohConfig::with_connect);
    if let Some(capacity) = settings.capacity {
        config = config.with_subscriber_capacity(capacity);
    }
    config = config.with_history(settings.history).with_replay_history(settings.replay_history);
    if let Some(sink) = sink {
        config = config.with_dead_letters(sink);
    }
    match ZenohEventBus::connect_with(config).await {
        Ok(bus) => Ok(Arc::new(bus)),
        Err(ZenohError::InvalidUrl(e)) => Err(p.invalid(e)),
        Err(ref e @ ZenohError::InvalidEndpoint { ref endpoint, .. }) => Err(p.refused(endpoint, e)),
        Err(e) => Err(p.failed("zenoh", e)),
    }
}

#[cfg(not(feature = "zenoh"))]
#[allow(clippy::unused_async)]
async fn connect_zenoh(p: &Parser<'_>, _settings: ZenohSettings<'_>, _sink: Sink) -> Result<Arc<dyn EventBus>, ConnectError> {
    Err(disabled(p, "zenoh", Backend::Zenoh))
}

/// [`ConnectError::FeatureDisabled`] for a URL built by hand (or parsed with another feature table)
/// in a build without its backend.
#[cfg_attr(all(feature = "memory", feature = "nats", feature = "redpanda", feature = "zenoh"), allow(dead_code))]
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

    fn parse(url: &str) -> BusUrl {
        parse_with(url, all).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn malformed(url: &str) -> (String, String) {
        match parse_with(url, all) {
            Err(ConnectError::Malformed { part, reason, .. }) => (part, reason),
            other => panic!("{url}: expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn memory_and_dual_urls_parse() {
        assert_eq!(parse("memory:"), BusUrl::Memory { capacity: None });
        assert_eq!(parse("memory"), BusUrl::Memory { capacity: None });
        assert_eq!(parse("memory:?capacity=10"), BusUrl::Memory { capacity: Some(10) });
        assert_eq!(
            parse("dual:memory:|memory:?capacity=3"),
            BusUrl::Dual { primary: Box::new(BusUrl::memory()), secondary: Box::new(BusUrl::Memory { capacity: Some(3) }), mode: DEFAULT_DUAL_MODE }
        );
        let BusUrl::Dual { mode, .. } = parse("dual:memory|memory|dual-read-secondary:required") else { panic!() };
        assert_eq!(mode, DualMode::Dual { read_from: Side::Secondary, mirror: SecondaryPolicy::Required });
        for url in ["memory:", "memory:?capacity=7", "dual:memory:|memory:?capacity=2|dual-read-secondary:required"] {
            assert_eq!(parse(url).to_string(), url, "canonical form");
        }
        assert_eq!(parse("dual:memory|memory").to_string(), "dual:memory:|memory:|dual-read-primary");
    }

    /// nats://, redpanda:// and zenoh: are parsed by their backends (whose own tests go through
    /// every malformed case); here, that the facade keeps what they read.
    #[test]
    #[cfg(all(feature = "nats", feature = "redpanda", feature = "zenoh"))]
    fn backend_urls_are_read_by_their_backends() {
        assert_eq!(parse("nats://127.0.0.1:4222"), BusUrl::Nats { url: "nats://127.0.0.1:4222".into() });
        assert_eq!(parse("NATS://user:pw@h:1/"), BusUrl::Nats { url: "nats://user:pw@h:1".into() });
        let kafka = BusUrl::Kafka { brokers: "a:1,b:2".into(), properties: vec![("acks".into(), "all".into()), ("batch.num.messages".into(), "1".into())] };
        assert_eq!(parse("redpanda://a:1,b:2?batch.num.messages=1&acks=all"), kafka);
        assert_eq!(parse("kafka://a:1,b:2/?batch.num.messages=1&acks=all"), kafka, "kafka:// is redpanda://");
        assert_eq!(parse("redpanda://h:1?sasl.password=a%26b").to_string(), "redpanda://h:1?sasl.password=***");
        assert_eq!(parse("zenoh"), BusUrl::zenoh_embedded());
        assert_eq!(parse("zenoh:"), BusUrl::zenoh_embedded());
        assert_eq!(parse("zenoh:embedded?capacity=5"), BusUrl::Zenoh { listen: vec![], connect: vec![], capacity: Some(5), history: 0, replay_history: false });
        assert_eq!(
            parse("zenoh:peer?listen=tcp/127.0.0.1:7447&connect=tcp/h:1&connect=tcp/h:2&history=10&replay_history=true"),
            BusUrl::Zenoh {
                listen: vec!["tcp/127.0.0.1:7447".into()],
                connect: vec!["tcp/h:1".into(), "tcp/h:2".into()],
                capacity: None,
                history: 10,
                replay_history: true
            }
        );
        let BusUrl::Dual { secondary, .. } = parse("dual:memory|kafka://h:1?acks=all|primary") else { panic!() };
        assert_eq!(secondary.scheme(), "redpanda");
        for url in [
            "nats://h:4222",
            "redpanda://a:1,b:2?batch.num.messages=1&client.id=a%26b",
            "zenoh:",
            "zenoh:?capacity=3&history=2&replay_history=true",
            "zenoh:peer?listen=tcp/127.0.0.1:1&connect=tcp/h:2",
            "dual:memory:|nats://h:1|primary",
            "dual:memory:?capacity=2|zenoh:peer?connect=tcp/h:1|dual-read-secondary:required",
        ] {
            let parsed = parse(url);
            assert_eq!(parsed.to_string(), url, "canonical form");
            assert_eq!(parse(&parsed.to_string()), parsed);
        }
        // The backends' refusals come back as the facade's, naming the part.
        assert_eq!(malformed("kafka://:9092").0, ":9092");
        assert_eq!(malformed("nats://h:1?x=1").0, "h:1?x=1");
        assert_eq!(malformed("zenoh:peer?connect=127.0.0.1:7447").0, "127.0.0.1:7447");
        let err = parse_with("dual:memory|redpanda://h:1?batch.num.messages", all).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed event bus URL \"dual:memory|redpanda://h:1?batch.num.messages\": \"batch.num.messages\": a query pair must be KEY=VALUE"
        );
    }

    #[test]
    fn unknown_schemes_list_the_known_ones() {
        for (url, scheme) in [("mqtt://h:1", "mqtt"), ("127.0.0.1:4222", "127.0.0.1"), ("in-memory", "in-memory"), ("dual:memory|amqp://h", "amqp")] {
            match parse_with(url, all) {
                Err(ConnectError::UnknownScheme { scheme: s, known, target: Target::Bus, .. }) => {
                    assert_eq!(s, scheme, "{url}");
                    assert_eq!(known, SCHEMES);
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let err = parse_with("mqtt://h:1", all).unwrap_err().to_string();
        assert_eq!(err, "unknown event bus URL scheme \"mqtt\" in \"mqtt://h:1\": use one of memory:, nats:, redpanda:, kafka:, zenoh:, dual:");
    }

    #[test]
    fn a_scheme_without_its_feature_names_the_feature() {
        for (url, feature) in [
            ("memory:", "memory"),
            ("nats://h:1", "nats"),
            ("redpanda://h:1", "redpanda"),
            ("kafka://h:1", "redpanda"),
            ("zenoh:", "zenoh"),
            ("dual:memory|zenoh", "memory"),
        ] {
            match parse_with(url, none) {
                Err(ConnectError::FeatureDisabled { feature: f, .. }) => assert_eq!(f, feature, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let only_memory = |b: Backend| b == Backend::Memory;
        let err = parse_with("dual:memory|zenoh:", only_memory).unwrap_err();
        assert!(matches!(&err, ConnectError::FeatureDisabled { feature: "zenoh", scheme, .. } if scheme == "zenoh"), "{err:?}");
        assert!(err.to_string().contains("needs the `zenoh` cargo feature") && err.to_string().contains("features = [\"zenoh\"]"), "{err}");
    }

    #[test]
    fn malformed_urls_point_at_the_bad_part() {
        assert_eq!(malformed("memory:?capacity=0").0, "capacity=0");
        assert_eq!(malformed("memory:?capacity=lots").0, "capacity=lots");
        assert_eq!(malformed("memory:?size=1").0, "size=1");
        assert!(malformed("memory:?size=1").1.contains("the options here are capacity"));
        assert_eq!(malformed("memory:/tmp").0, "/tmp");
        assert_eq!(malformed("dual:memory").0, "memory");
        assert_eq!(malformed("dual:memory|memory|sideways").0, "sideways");
        assert!(malformed("dual:memory|memory|sideways").1.contains("unknown dual bus mode"));
        assert_eq!(malformed("dual:memory|dual:memory|memory").0, "dual:memory");
        assert_eq!(malformed("").1, "an empty URL: give one of memory:, nats:, redpanda:, kafka:, zenoh:, dual:");
        let err = parse_with("memory:?capacity", all).unwrap_err();
        assert_eq!(err.to_string(), "malformed event bus URL \"memory:?capacity\": \"capacity\": a query pair must be KEY=VALUE");
    }

    #[test]
    #[cfg(all(feature = "nats", feature = "zenoh"))]
    fn default_capacities_fill_only_what_the_url_left_open() {
        let mut url = parse("dual:memory:?capacity=2|zenoh:");
        url.set_default_capacity(100);
        assert_eq!(url.to_string(), "dual:memory:?capacity=2|zenoh:?capacity=100|dual-read-primary");
        let mut nats = parse("nats://h:1");
        nats.set_default_capacity(100);
        assert_eq!(nats, parse("nats://h:1"));
    }
}
