//! Settings and setup errors.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::dead_letter::{DeadLetterSink, InMemoryDeadLetters};
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::url::{UrlError, UrlReader};

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost on restart.
    Memory,
}

/// How to connect and what to create: [`NatsConfig::new`] or [`NatsConfig::from_url`], then the
/// `with_*` setters; every setting has a default.
///
/// ```
/// use std::time::Duration;
///
/// use composable_rust_nats::{NatsConfig, Storage};
///
/// let config = NatsConfig::from_url("nats://127.0.0.1:4222")?.with_storage(Storage::Memory).with_max_deliver(3).with_ack_wait(Duration::from_secs(5));
/// assert_eq!((config.server_url(), config.max_deliver()), ("nats://127.0.0.1:4222", 3));
/// # Ok::<(), composable_rust_nats::NatsError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    server_url: String,
    stream_name: String,
    subject_prefix: String,
    storage: Storage,
    duplicate_window: Duration,
    max_deliver: u32,
    ack_wait: Duration,
    pull_batch: usize,
    pull_expiry: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    dead_letters: Arc<dyn DeadLetterSink>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("server_url", &composable_rust_core::url::redact(&self.server_url))
            .field("stream_name", &self.stream_name)
            .field("subject_prefix", &self.subject_prefix)
            .field("storage", &self.storage)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_deliver", &self.max_deliver)
            .field("ack_wait", &self.ack_wait)
            .field("pull_batch", &self.pull_batch)
            .field("pull_expiry", &self.pull_expiry)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// Defaults for the server at `server_url`, as the NATS client reads it (`nats://HOST:PORT`,
    /// `tls://...`, several servers separated by commas): stream `COMPOSABLE_RUST` on file storage,
    /// subjects under `cr.`, a 2-minute duplicate window, 5 deliveries, a 30 s ack wait, 64 messages
    /// pulled ahead, 5 s timeouts, dead letters kept by a new bounded [`InMemoryDeadLetters`].
    pub fn new(server_url: impl Into<String>) -> Self {
        Self {
            server_url: server_url.into(),
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
            dead_letters: Arc::new(InMemoryDeadLetters::default()),
        }
    }

    /// Defaults for a composable-rust NATS URL, `nats://[USER:PASSWORD@]HOST[:PORT]`: one server, no
    /// path, no query (the stream's settings are the `with_*` setters'). The URL the
    /// `composable-rust` facade's `bus::connect` takes for NATS.
    pub fn from_url(url: &str) -> Result<Self, NatsError> {
        let url = url.trim();
        let r = UrlReader::new(url);
        let (_, rest) = r.scheme(&["nats"])?;
        let authority = r.authority(rest, "nats://HOST:PORT, e.g. nats://127.0.0.1:4222")?;
        if authority.contains('?') {
            return Err(r.error(authority, "a NATS URL takes no query: configure the stream with NatsConfig and NatsEventBus::connect_with").into());
        }
        let authority = authority.trim_end_matches('/');
        if authority.contains('/') || authority.contains(',') {
            return Err(r.error(authority, "a NATS URL names one server, HOST[:PORT], with no path").into());
        }
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        if host_port.is_empty() || host_port.starts_with(':') {
            return Err(r.error(host_port, "the host is empty: expected nats://HOST:PORT").into());
        }
        Ok(Self::new(format!("nats://{authority}")))
    }

    /// The server URL.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The JetStream stream holding every topic.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// Sets the JetStream stream holding every topic (created if missing).
    #[must_use]
    pub fn with_stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = name.into();
        self
    }

    /// The subject prefix: topic `a.b` is subject `{prefix}.a.b`.
    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// Sets the subject prefix.
    #[must_use]
    pub fn with_subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// The storage of the stream.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Sets the storage of the stream (when this bus creates it).
    #[must_use]
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// The window within which a re-published event id is de-duplicated by the server.
    pub fn duplicate_window(&self) -> Duration {
        self.duplicate_window
    }

    /// Sets the duplicate window (when this bus creates the stream).
    #[must_use]
    pub fn with_duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Deliveries of one message before it is terminated and dead-lettered.
    pub fn max_deliver(&self) -> u32 {
        self.max_deliver
    }

    /// Sets the deliveries of one message before it is terminated and dead-lettered (at least 1).
    #[must_use]
    pub fn with_max_deliver(mut self, deliveries: u32) -> Self {
        self.max_deliver = deliveries.max(1);
        self
    }

    /// How long the server waits for an ack before delivering again.
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// Sets how long the server waits for an ack before delivering again.
    #[must_use]
    pub fn with_ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Messages one subscriber pulls ahead.
    pub fn pull_batch(&self) -> usize {
        self.pull_batch
    }

    /// Sets the messages one subscriber pulls ahead (at least 1). A subscriber that dies holds at
    /// most this many, until the ack wait and the pull expiry pass.
    #[must_use]
    pub fn with_pull_batch(mut self, messages: usize) -> Self {
        self.pull_batch = messages.max(1);
        self
    }

    /// The lifetime of one pull request.
    pub fn pull_expiry(&self) -> Duration {
        self.pull_expiry
    }

    /// Sets the lifetime of one pull request: a dead subscriber's outstanding pull stops receiving
    /// (and swallowing redeliveries) after this.
    #[must_use]
    pub fn with_pull_expiry(mut self, expiry: Duration) -> Self {
        self.pull_expiry = expiry;
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sets how long connecting may take.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one JetStream request (publish ack, consumer creation) may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sets how long one JetStream request may take.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Where the bus records the messages it terminates.
    pub fn dead_letter_sink(&self) -> &Arc<dyn DeadLetterSink> {
        &self.dead_letters
    }

    /// Records the messages the bus terminates (too many deliveries, not an event) in `sink`: give
    /// it the runtime's sink (`Executor::builder().dead_letters(..)`) to keep one record.
    #[must_use]
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = sink;
        self
    }
}

/// Why the bus could not be set up. Each variant keeps the client's error as its source. New
/// variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The URL is not a NATS URL.
    #[error("invalid NATS URL: {0}")]
    InvalidUrl(#[source] UrlError),
    /// The server did not answer.
    #[error("cannot reach NATS at {url}: {source}; is nats-server running (with -js)?")]
    Unreachable {
        /// The URL (password hidden).
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

impl From<UrlError> for NatsError {
    fn from(e: UrlError) -> Self {
        NatsError::InvalidUrl(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> UrlError {
        match NatsConfig::from_url(url) {
            Err(NatsError::InvalidUrl(e)) => e,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn urls_name_one_server() {
        assert_eq!(NatsConfig::from_url("nats://127.0.0.1:4222").unwrap().server_url(), "nats://127.0.0.1:4222");
        assert_eq!(NatsConfig::from_url(" NATS://user:pw@h:1/ ").unwrap().server_url(), "nats://user:pw@h:1");
        assert_eq!(refused("nats://").reason, "the host is empty: expected nats://HOST:PORT");
        assert_eq!(refused("nats://:4222").part, ":4222");
        assert_eq!(refused("nats://u:pw@:4222").part, ":4222");
        assert!(refused("nats://h:1?x=1").reason.contains("no query"));
        assert!(refused("nats://h:1,h:2").reason.contains("one server"));
        assert!(refused("nats").reason.contains("expected nats://HOST:PORT"));
        assert_eq!(refused("http://h:1").part, "http");
        assert_eq!(refused("nats://u:secret@h:1/x").url, "nats://u:***@h:1/x", "passwords stay hidden");
    }

    #[test]
    fn setters_keep_their_bounds() {
        let config = NatsConfig::new("nats://h:1").with_max_deliver(0).with_pull_batch(0);
        assert_eq!((config.max_deliver(), config.pull_batch()), (1, 1));
        assert!(!format!("{:?}", NatsConfig::new("nats://u:secret@h:1")).contains("secret"));
    }
}
