//! Settings and setup errors.

use std::time::Duration;

use composable_rust_core::event_bus::BusCause;

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost on restart.
    Memory,
}

/// How to connect and what to create.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// JetStream stream holding every topic.
    pub stream_name: String,
    /// Subject prefix: topic `a.b` is subject `{prefix}.a.b`.
    pub subject_prefix: String,
    /// Storage of the stream.
    pub storage: Storage,
    /// Window within which a re-published event id is de-duplicated by the server.
    pub duplicate_window: Duration,
    /// Deliveries of one message before it is terminated and dead-lettered.
    pub max_deliver: i64,
    /// How long the server waits for an ack before delivering again.
    pub ack_wait: Duration,
    /// Messages one subscriber pulls ahead. A subscriber that dies holds at most this many, until
    /// `ack_wait` and `pull_expiry` pass.
    pub pull_batch: usize,
    /// Lifetime of one pull request: a dead subscriber's outstanding pull stops receiving (and
    /// swallowing redeliveries) after this.
    pub pull_expiry: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one JetStream request (publish ack, consumer creation) may take.
    pub request_timeout: Duration,
    /// Dead letters the bus keeps in memory ([`NatsEventBus::dead_letters`](crate::NatsEventBus::dead_letters));
    /// older ones are dropped and only counted.
    pub dead_letter_capacity: usize,
}

impl NatsConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream_name: "COMPOSABLE_RUST".into(),
            subject_prefix: "cr".into(),
            storage: Storage::File,
            duplicate_window: Duration::from_secs(120),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            pull_batch: 64,
            pull_expiry: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            dead_letter_capacity: 1_000,
        }
    }
}

/// Why the bus could not be set up. Each variant keeps the client's error as its source.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The URL is not a NATS URL.
    #[error("invalid NATS URL {url:?}: {source}; expected e.g. nats://127.0.0.1:4222")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// The parser's error.
        #[source]
        source: BusCause,
    },
    /// The server did not answer.
    #[error("cannot reach NATS at {url}: {source}; is nats-server running (with -js)?")]
    Unreachable {
        /// The URL.
        url: String,
        /// The client's error.
        #[source]
        source: BusCause,
    },
    /// JetStream is not enabled or the stream cannot be created.
    #[error("JetStream stream {stream}: {source}; start nats-server with -js, or fix the stream's configuration")]
    Stream {
        /// The stream.
        stream: String,
        /// The client's error, or what is wrong with the existing stream.
        #[source]
        source: BusCause,
    },
}
