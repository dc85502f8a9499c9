//! SSE feeds of the store's events: [`Feeds`] owns the shared tail and answers feed requests;
//! [`Feeds::feed`] and [`Feeds::session_feed`] are the routes.
//!
//! A client's connection goes through these phases:
//!
//! 1. it subscribes to the tail's broadcast and learns the tail's position `P`, atomically;
//! 2. it sends a preamble, `retry: <ms>` and `id: <start>` with no data, so that a browser that
//!    reconnects before any event resumes from the right place (`start` is the resume position the
//!    client gave, or `P` for a new client);
//! 3. if it resumes from before `P`, it reads the store from its resume position up to `P` at least
//!    (`read_all_filtered`, in pages), sending the matching events;
//! 4. it sends the matching events of the broadcast batches, skipping every position it has already
//!    passed: no gap (it subscribed before reading the store) and no duplicate.
//!
//! A client that falls more than the broadcast's capacity behind gets a `reset` event whose `id` is
//! the position to resume after, then the stream ends; an `EventSource` reconnects by itself with
//! that id as `Last-Event-ID` and loses nothing. (A client that lags during its own catch-up is
//! caught up from the store again instead, a few times, before it is reset.)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::{Bytes, BytesMut};
use composable_rust_core::{EventFilter, EventStore, EventStoreError, GlobalPosition, StreamId, StreamIdError, TopicError, TopicPattern};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::frame::{self, Encoder, FeedBatch, FeedEvent, PayloadDecoder};
use crate::health::ReadinessCheck;
use crate::session::{AuthError, Authenticate, SessionId};
use crate::tail::{Tail, TailStatus};
use crate::topic_of::{TopicOf, category};

/// The SSE event type of the event sent to a client that fell behind (see the module docs).
pub const RESET_EVENT: &str = "reset";

/// The request header a reconnecting `EventSource` sends with the last `id` it received.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// How often a client lagging during its catch-up is caught up again before it is reset.
const MAX_CATCH_UP_ROUNDS: u32 = 4;

/// How the feeds read, buffer and send. Every setting has a default (`FeedConfig::default()`).
#[derive(Debug, Clone)]
pub struct FeedConfig {
    poll: Duration,
    tail_batch: usize,
    buffer: usize,
    catch_up_batch: usize,
    keep_alive: Duration,
    retry: Duration,
    stall_after: Duration,
    start_after: Option<GlobalPosition>,
    topic_of: TopicOf,
    payload: PayloadDecoder,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(20),
            tail_batch: 256,
            buffer: 1024,
            catch_up_batch: 512,
            keep_alive: Duration::from_secs(15),
            retry: Duration::from_secs(1),
            stall_after: Duration::from_secs(10),
            start_after: None,
            topic_of: TopicOf::default(),
            payload: PayloadDecoder::default(),
        }
    }
}

impl FeedConfig {
    /// How long the caught-up tail waits before it reads the store again (default 20 ms; at least
    /// 1 ms). [`Feeds::wake`] cuts a wait short.
    #[must_use]
    pub fn with_poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Most events the tail reads at once, i.e. in one broadcast batch (default 256).
    #[must_use]
    pub fn with_tail_batch(mut self, events: usize) -> Self {
        self.tail_batch = events.max(1);
        self
    }

    /// How many batches the broadcast keeps for clients that are behind (default 1024). A client
    /// more than this many batches behind gets a reset. The memory is shared: it does not grow
    /// with the number of clients.
    #[must_use]
    pub fn with_buffer(mut self, batches: usize) -> Self {
        self.buffer = batches.max(1);
        self
    }

    /// Most events a resuming client reads from the store at once (default 512).
    #[must_use]
    pub fn with_catch_up_batch(mut self, events: usize) -> Self {
        self.catch_up_batch = events.max(1);
        self
    }

    /// How long a client's stream may stay silent before a keep-alive comment (`:`) is sent
    /// (default 15 s).
    #[must_use]
    pub fn with_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every.max(Duration::from_millis(1));
        self
    }

    /// The reconnection delay the preamble's `retry:` asks browsers for (default 1 s).
    #[must_use]
    pub fn with_retry(mut self, after: Duration) -> Self {
        self.retry = after;
        self
    }

    /// After how long without a successful read of the store the tail reports itself stalled
    /// (default 10 s; see [`Feeds::stall_check`]).
    #[must_use]
    pub fn with_stall_after(mut self, after: Duration) -> Self {
        self.stall_after = after;
        self
    }

    /// Starts the tail after `position` instead of the store's head at start: the first clients
    /// then also receive the events after `position` live.
    #[must_use]
    pub fn with_start_after(mut self, position: GlobalPosition) -> Self {
        self.start_after = Some(position);
        self
    }

    /// Replaces the topic function (default [`default_topic`](crate::default_topic)).
    #[must_use]
    pub fn with_topic_of(mut self, topic_of: TopicOf) -> Self {
        self.topic_of = topic_of;
        self
    }

    /// Replaces the payload decoder (default [`PayloadDecoder::base64`]).
    #[must_use]
    pub fn with_payload(mut self, payload: PayloadDecoder) -> Self {
        self.payload = payload;
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Sessions {
    #[default]
    None,
    Any,
    Only(SessionId),
}

/// Which events one client receives: those whose topic matches a pattern, of one stream, of one
/// session, all of these together.
///
/// By default (`FeedFilter::new()`) a feed holds only events that belong to no session (no
/// [`SESSION_HEADER`](crate::SESSION_HEADER)): a public feed never shows a session's events.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    topic: Option<TopicPattern>,
    stream: Option<StreamId>,
    sessions: Sessions,
}

impl FeedFilter {
    /// Every event that belongs to no session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events whose topic matches `pattern`.
    #[must_use]
    pub fn topic(mut self, pattern: TopicPattern) -> Self {
        self.topic = Some(pattern);
        self
    }

    /// Only events of `stream`.
    #[must_use]
    pub fn stream(mut self, stream: StreamId) -> Self {
        self.stream = Some(stream);
        self
    }

    /// Only events of `session` (and no event without a session).
    #[must_use]
    pub fn session(mut self, session: SessionId) -> Self {
        self.sessions = Sessions::Only(session);
        self
    }

    /// Events of every session as well as those without one: for trusted, internal feeds only.
    #[must_use]
    pub fn all_sessions(mut self) -> Self {
        self.sessions = Sessions::Any;
        self
    }

    /// The topic pattern, if any.
    pub fn topic_pattern(&self) -> Option<&TopicPattern> {
        self.topic.as_ref()
    }

    /// The stream, if any.
    pub fn stream_id(&self) -> Option<&StreamId> {
        self.stream.as_ref()
    }

    /// The session, if the feed is limited to one.
    pub fn session_id(&self) -> Option<&SessionId> {
        match &self.sessions {
            Sessions::Only(s) => Some(s),
            _ => None,
        }
    }

    fn matches(&self, e: &FeedEvent) -> bool {
        let session_ok = match &self.sessions {
            Sessions::None => e.session.is_none(),
            Sessions::Any => true,
            Sessions::Only(s) => e.session.as_deref() == Some(s.as_str()),
        };
        session_ok && self.stream.as_ref().is_none_or(|s| e.stream_id.as_ref() == Some(s)) && self.topic.as_ref().is_none_or(|p| p.matches(&e.topic))
    }

    /// What the store can filter on for this feed's catch-up (stream categories only; the rest is
    /// filtered here).
    fn store_filter(&self) -> EventFilter {
        match &self.stream {
            Some(s) if s.as_str().contains('-') => EventFilter::all().category(category(s.as_str())),
            _ => EventFilter::all(),
        }
    }
}

#[derive(Deserialize)]
struct FeedQuery {
    topic: Option<String>,
    stream: Option<String>,
    after: Option<String>,
}

/// A parsed feed request: the filter from `?topic=PATTERN&stream=ID`, and the position to resume
/// after from the `Last-Event-ID` header or, without one, `?after=POSITION`.
#[derive(Debug, Clone, Default)]
pub struct FeedRequest {
    /// Which events.
    pub filter: FeedFilter,
    /// Resume after this position (the `id` of the last event received); `None`: live only.
    pub resume_after: Option<GlobalPosition>,
}

impl FeedRequest {
    /// Parses a request's head. `Last-Event-ID` wins over `?after=`, since a reconnecting browser
    /// sends the URL it first opened (with its `after`) and the header with where it got to.
    pub fn from_parts(parts: &Parts) -> Result<Self, FeedRequestError> {
        let query = axum::extract::Query::<FeedQuery>::try_from_uri(&parts.uri).map_err(|e| FeedRequestError::Query { reason: e.body_text() })?.0;
        let mut filter = FeedFilter::new();
        if let Some(topic) = query.topic {
            filter = filter.topic(TopicPattern::new(&topic)?);
        }
        if let Some(stream) = query.stream {
            filter = filter.stream(StreamId::new(stream)?);
        }
        let header = parts.headers.get(LAST_EVENT_ID).map(|v| v.to_str().map_or("?", str::trim)).filter(|v| !v.is_empty());
        let resume_after = match header.or(query.after.as_deref()) {
            Some(value) => Some(GlobalPosition(value.parse().map_err(|_| FeedRequestError::Position { value: value.to_owned() })?)),
            None => None,
        };
        Ok(Self { filter, resume_after })
    }
}

/// Why a feed request was refused; answered with 400, or the [`AuthError`]'s status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedRequestError {
    /// `?topic=` is not a valid pattern.
    #[error("invalid `topic` parameter: {0}")]
    Topic(#[from] TopicError),
    /// `?stream=` is not a valid stream id.
    #[error("invalid `stream` parameter: {0}")]
    Stream(#[from] StreamIdError),
    /// `Last-Event-ID` or `?after=` is not a position.
    #[error("invalid resume position {value:?} (Last-Event-ID or `after`): give the `id` of an event received from this feed, a non-negative integer")]
    Position {
        /// What was sent.
        value: String,
    },
    /// The query string cannot be read.
    #[error("invalid query string: {reason}")]
    Query {
        /// Why.
        reason: String,
    },
    /// The caller may not read this session feed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl FeedRequestError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            FeedRequestError::Auth(e) => e.status(),
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for FeedRequestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, self.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

struct Inner {
    tail: Arc<Tail>,
    task: tokio::task::AbortHandle,
    closed: tokio::sync::watch::Sender<bool>,
    clients: Arc<AtomicUsize>,
    keep_alive: Duration,
    retry: Duration,
    catch_up_batch: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SSE feeds of one store: one shared tail task reading the store, and the routes that serve
/// it. Cheap to clone; the tail stops when the last clone (and the last connected client) is gone.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").field("position", &self.position()).field("clients", &self.clients()).finish_non_exhaustive()
    }
}

impl Feeds {
    /// Starts the tail on the current tokio runtime, after the store's head (or the configured
    /// start position). Fails when the store cannot tell its head.
    pub async fn start(store: Arc<dyn EventStore>, config: FeedConfig) -> Result<Self, EventStoreError> {
        let after = match config.start_after {
            Some(p) => p,
            None => store.head().await?,
        };
        let encoder = Encoder { topic_of: config.topic_of, payload: config.payload };
        let tail = Arc::new(Tail::new(store, encoder, after, config.buffer, config.poll, config.tail_batch, config.stall_after));
        let task = tokio::spawn(tail.clone().run()).abort_handle();
        tracing::debug!(after = after.0, "feed tail started");
        Ok(Self {
            inner: Arc::new(Inner {
                tail,
                task,
                closed: tokio::sync::watch::Sender::new(false),
                clients: Arc::new(AtomicUsize::new(0)),
                keep_alive: config.keep_alive,
                retry: config.retry,
                catch_up_batch: config.catch_up_batch,
            }),
        })
    }

    /// The public feed route: `GET ...?topic=PATTERN&stream=ID&after=POSITION` (all optional),
    /// events that belong to no session. Use it as `Router::new().route("/events", feeds.feed())`.
    pub fn feed<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let feeds = self.clone();
        get(move |request: Request| {
            let feeds = feeds.clone();
            async move {
                let (parts, _) = request.into_parts();
                match FeedRequest::from_parts(&parts) {
                    Ok(request) => feeds.respond(request),
                    Err(e) => e.into_response(),
                }
            }
        })
    }

    /// The session feed route: the events of the caller's session only, the session given by
    /// `auth` (401 when it refuses the caller). When the route's path has a `{session}` segment
    /// (`/sessions/{session}/events`), it must name the caller's session, else 403. Same query as
    /// [`Feeds::feed`].
    pub fn session_feed<S>(&self, auth: impl Authenticate) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let feeds = self.clone();
        let auth: Arc<dyn Authenticate> = Arc::new(auth);
        get(move |request: Request| {
            let feeds = feeds.clone();
            let auth = auth.clone();
            async move {
                let (mut parts, _) = request.into_parts();
                match session_request(&*auth, &mut parts).await {
                    Ok(request) => feeds.respond(request),
                    Err(e) => e.into_response(),
                }
            }
        })
    }

    /// The SSE response for `request`, for handlers of your own (after your own checks or with a
    /// filter you build). 503 once the feeds are [closed](Feeds::close).
    pub fn respond(&self, request: FeedRequest) -> Response {
        if self.is_closed() {
            return (StatusCode::SERVICE_UNAVAILABLE, "the feeds are closed: the server is shutting down").into_response();
        }
        let client = Client::new(self.clone(), request);
        let body = Body::from_stream(futures::stream::unfold(client, |mut client| async move {
            let bytes = client.next().await?;
            Some((Ok::<Bytes, Infallible>(bytes), client))
        }));
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tells nginx-style proxies not to buffer the stream.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }

    /// Every event up to here has been read by the tail and sent to the connected clients.
    pub fn position(&self) -> GlobalPosition {
        self.inner.tail.position()
    }

    /// SSE clients connected now.
    pub fn clients(&self) -> usize {
        self.inner.clients.load(Ordering::Relaxed)
    }

    /// The tail's position, last read and whether it is stalled.
    pub fn status(&self) -> TailStatus {
        self.inner.tail.status()
    }

    /// Ends every client's stream (an `EventSource` reconnects, with its last event id, to
    /// whichever server answers next), stops the tail, and answers later feed requests with 503.
    /// Call it before a graceful shutdown: open SSE responses never end by themselves.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
        self.inner.task.abort();
    }

    /// Whether [`Feeds::close`] was called.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Makes the tail read the store now instead of at its next poll (call it after an append to
    /// cut the feeds' latency below the poll interval).
    pub fn wake(&self) {
        self.inner.tail.wake();
    }

    /// A readiness check that fails while the tail is stalled: its last successful read of the
    /// store is older than [`FeedConfig::with_stall_after`]; the reason carries the last error.
    pub fn stall_check(&self) -> impl ReadinessCheck {
        TailStalled(self.clone())
    }
}

async fn session_request(auth: &dyn Authenticate, parts: &mut Parts) -> Result<FeedRequest, FeedRequestError> {
    let session = auth.session(parts).await?;
    // The URL may name the session only to repeat the verified one.
    if let Ok(params) = RawPathParams::from_request_parts(parts, &()).await {
        if params.iter().any(|(k, v)| k == "session" && v != session.as_str()) {
            return Err(AuthError::WrongSession.into());
        }
    }
    let mut request = FeedRequest::from_parts(parts)?;
    request.filter = request.filter.session(session);
    Ok(request)
}

struct TailStalled(Feeds);

#[async_trait]
impl ReadinessCheck for TailStalled {
    async fn check(&self) -> Result<(), String> {
        let status = self.0.status();
        if !status.stalled {
            return Ok(());
        }
        Err(format!(
            "feed tail at position {} has not read the store for {} ms{}",
            status.position.0,
            status.since_last_read.as_millis(),
            status.last_error.map(|e| format!(": {e}")).unwrap_or_default()
        ))
    }
}

#[async_trait]
impl<T: Authenticate + ?Sized> Authenticate for Arc<T> {
    async fn session(&self, parts: &Parts) -> Result<SessionId, AuthError> {
        (**self).session(parts).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    CatchUp { target: GlobalPosition },
    Live,
    Done,
}

/// Counts a connected client in the gauge and in [`Feeds::clients`] while it lives.
struct Connected {
    gauge: metrics::Gauge,
    count: Arc<AtomicUsize>,
}

impl Connected {
    fn new(count: Arc<AtomicUsize>) -> Self {
        let gauge = metrics::gauge!(crate::metrics::SSE_CLIENTS_CONNECTED);
        gauge.increment(1.0);
        count.fetch_add(1, Ordering::Relaxed);
        Self { gauge, count }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client's stream (see the module docs).
struct Client {
    feeds: Feeds,
    filter: FeedFilter,
    store_filter: EventFilter,
    rx: broadcast::Receiver<Arc<FeedBatch>>,
    /// Every event this client wants up to here has been sent: the position to resume after.
    served: GlobalPosition,
    last_sent: Option<GlobalPosition>,
    phase: Phase,
    preamble: bool,
    /// Whether a broadcast batch arrived since the last (re)subscription.
    live_received: bool,
    rounds: u32,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    closed: tokio::sync::watch::Receiver<bool>,
    delivered: metrics::Counter,
    _connected: Connected,
}

impl Client {
    fn new(feeds: Feeds, request: FeedRequest) -> Self {
        let (rx, position) = feeds.inner.tail.subscribe();
        let served = request.resume_after.unwrap_or(position);
        let phase = if served < position { Phase::CatchUp { target: position } } else { Phase::Live };
        let keep_alive = Box::pin(tokio::time::sleep(feeds.inner.keep_alive));
        let connected = Connected::new(feeds.inner.clients.clone());
        let closed = feeds.inner.closed.subscribe();
        Self {
            closed,
            store_filter: request.filter.store_filter(),
            filter: request.filter,
            rx,
            served,
            last_sent: None,
            phase,
            preamble: true,
            live_received: false,
            rounds: 0,
            keep_alive,
            delivered: metrics::counter!(crate::metrics::SSE_EVENTS_DELIVERED),
            _connected: connected,
            feeds,
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        if std::mem::take(&mut self.preamble) {
            return Some(self.sent(frame::preamble(self.feeds.inner.retry.as_millis(), self.served), None, 0));
        }
        loop {
            if *self.closed.borrow() {
                self.phase = Phase::Done;
            }
            match self.phase {
                Phase::Done => return None,
                Phase::CatchUp { target } => {
                    if let Some(bytes) = self.catch_up(target).await {
                        return Some(bytes);
                    }
                }
                Phase::Live => {
                    let received = tokio::select! {
                        biased;
                        received = self.rx.recv() => received,
                        () = self.keep_alive.as_mut() => return Some(self.sent(Bytes::from_static(frame::KEEP_ALIVE), None, 0)),
                        changed = self.closed.changed() => {
                            if changed.is_err() {
                                self.phase = Phase::Done;
                            }
                            continue;
                        }
                    };
                    match received {
                        Ok(batch) => {
                            self.live_received = true;
                            if batch.last_position() <= self.served {
                                continue;
                            }
                            let (bytes, last, n) = self.select(&batch);
                            self.served = batch.last_position();
                            if n > 0 {
                                return Some(self.sent(bytes, last, n));
                            }
                        }
                        Err(RecvError::Lagged(missed)) => {
                            if !self.live_received && self.rounds < MAX_CATCH_UP_ROUNDS {
                                // Behind before its first live batch: it was catching up; read the
                                // store again rather than reset it.
                                self.rounds += 1;
                                let (rx, target) = self.feeds.inner.tail.subscribe();
                                self.rx = rx;
                                self.phase = if target > self.served { Phase::CatchUp { target } } else { Phase::Live };
                                continue;
                            }
                            tracing::debug!(missed_batches = missed, resume_after = self.served.0, "feed client fell behind its buffer: reset");
                            return Some(self.reset("lagged"));
                        }
                        Err(RecvError::Closed) => {
                            self.phase = Phase::Done;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// One page of the catch-up: its matching events, or `None` when none matched (the phase may
    /// have moved on).
    async fn catch_up(&mut self, target: GlobalPosition) -> Option<Bytes> {
        let inner = &self.feeds.inner;
        let page = match inner.tail.store.read_all_filtered(self.served, inner.catch_up_batch, &self.store_filter).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, resume_after = self.served.0, "feed client: catching up from the store failed: reset");
                return Some(self.reset("store unavailable"));
            }
        };
        if page.scanned_to <= self.served {
            // The tail read up to `target` from this store, so it can be read; a store that cannot
            // (any more) gets a reset rather than a silent gap.
            tracing::warn!(served = self.served.0, target = target.0, "feed client: the store returns nothing up to the tail's position: reset");
            return Some(self.reset("store behind the feed"));
        }
        let batch = inner.tail.encoder.batch(&page.events);
        let (bytes, last, n) = self.select(&batch);
        self.served = self.served.max(page.scanned_to);
        if self.served >= target {
            self.phase = Phase::Live;
            self.live_received = false;
        }
        (n > 0).then(|| self.sent(bytes, last, n))
    }

    /// The frames of `batch` this client wants (after `served`, matching the filter), the last
    /// one's position and how many.
    fn select(&self, batch: &FeedBatch) -> (Bytes, Option<GlobalPosition>, u64) {
        let whole = self.filter.topic.is_none()
            && self.filter.stream.is_none()
            && batch.first_position() > self.served
            && match self.filter.sessions {
                Sessions::Any => true,
                Sessions::None => !batch.any_session,
                Sessions::Only(_) => false,
            };
        if whole {
            return (batch.frames.clone(), Some(batch.last_position()), batch.events.len() as u64);
        }
        let mut wanted = batch.events.iter().filter(|e| e.position > self.served && self.filter.matches(e));
        let Some(first) = wanted.next() else { return (Bytes::new(), None, 0) };
        let Some(second) = wanted.next() else { return (first.frame.clone(), Some(first.position), 1) };
        let mut buf = BytesMut::with_capacity(first.frame.len() * 4);
        let (mut last, mut n) = (second.position, 2);
        buf.extend_from_slice(&first.frame);
        buf.extend_from_slice(&second.frame);
        for e in wanted {
            buf.extend_from_slice(&e.frame);
            last = e.position;
            n += 1;
        }
        (buf.freeze(), Some(last), n)
    }

    fn sent(&mut self, bytes: Bytes, last: Option<GlobalPosition>, events: u64) -> Bytes {
        if events > 0 {
            self.delivered.increment(events);
        }
        if last.is_some() {
            self.last_sent = last;
        }
        self.keep_alive.as_mut().reset(tokio::time::Instant::now() + self.feeds.inner.keep_alive);
        bytes
    }

    fn reset(&mut self, reason: &str) -> Bytes {
        metrics::counter!(crate::metrics::SSE_RESETS).increment(1);
        self.phase = Phase::Done;
        frame::reset(self.served, self.last_sent, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;

    fn parts(uri: &str, last_event_id: Option<&str>) -> Parts {
        let mut b = HttpRequest::builder().uri(uri);
        if let Some(id) = last_event_id {
            b = b.header(LAST_EVENT_ID, id);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn requests_parse_filters_and_resume_positions() {
        let r = FeedRequest::from_parts(&parts("/events?topic=order.%3E&stream=order-7&after=3", None)).unwrap();
        assert_eq!(r.filter.topic_pattern().map(TopicPattern::as_str), Some("order.>"));
        assert_eq!(r.filter.stream_id().map(StreamId::as_str), Some("order-7"));
        assert_eq!(r.resume_after, Some(GlobalPosition(3)));
        assert_eq!(r.filter.store_filter(), EventFilter::all().category("order"));
        // The header wins over `after`.
        assert_eq!(FeedRequest::from_parts(&parts("/e?after=3", Some("41"))).unwrap().resume_after, Some(GlobalPosition(41)));
        assert_eq!(FeedRequest::from_parts(&parts("/e", None)).unwrap().resume_after, None);
        let bad = FeedRequest::from_parts(&parts("/e?topic=a.%3E.b", None)).unwrap_err();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(bad.to_string().contains(&TopicPattern::new("a.>.b").unwrap_err().to_string()), "{bad}");
        assert!(matches!(FeedRequest::from_parts(&parts("/e", Some("x1"))), Err(FeedRequestError::Position { .. })));
        assert!(matches!(FeedRequest::from_parts(&parts("/e?stream=", None)), Err(FeedRequestError::Stream(_))));
    }

    #[test]
    fn filters_keep_sessions_apart() {
        let event = |session: Option<&str>| FeedEvent {
            position: GlobalPosition(1),
            topic: "order.OrderPlaced".into(),
            stream_id: Some(StreamId::new("order-1").unwrap()),
            session: session.map(Into::into),
            frame: Bytes::new(),
        };
        let alice = SessionId::new("alice").unwrap();
        let public = FeedFilter::new();
        assert!(public.matches(&event(None)) && !public.matches(&event(Some("alice"))));
        let only = FeedFilter::new().session(alice);
        assert!(only.matches(&event(Some("alice"))) && !only.matches(&event(Some("bob"))) && !only.matches(&event(None)));
        assert!(FeedFilter::new().all_sessions().matches(&event(Some("bob"))));
        assert!(!FeedFilter::new().topic(TopicPattern::new("payment.>").unwrap()).matches(&event(None)));
        assert!(!FeedFilter::new().stream(StreamId::new("order-2").unwrap()).matches(&event(None)));
        assert_eq!(FeedFilter::new().stream(StreamId::new("inventory").unwrap()).store_filter(), EventFilter::all());
    }
}
