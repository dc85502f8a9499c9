//! Test support: a real server on 127.0.0.1:0, a real HTTP/1.1 client (hyper) and an SSE parser
//! that follows the HTML spec's rules (fields, comments, blank-line dispatch, last event id).

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use composable_rust_core::{AppendRequest, EventMetadata, EventStore, ExpectedVersion, RecordedEvent, SerializedEvent, StreamId};
use composable_rust_web::axum::Router;
use composable_rust_web::axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// How long any wait in these tests may take before it fails (a bound, not a timing goal).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Serves `router` on 127.0.0.1:0 in a task; returns the address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { composable_rust_web::axum::serve(composable_rust_web::SseListener::new(listener), router).await.expect("server") });
    addr
}

/// The stores every feed test runs against: in memory and SQLite (a temporary file).
pub enum Backend {
    Memory,
    Sqlite,
}

pub struct TestStore {
    pub store: Arc<dyn EventStore>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub async fn open(&self) -> TestStore {
        match self {
            Backend::Memory => TestStore { store: Arc::new(composable_rust_memory::InMemoryEventStore::new()), _dir: None },
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let store = composable_rust_sqlite::SqliteEventStore::open(dir.path().join("events.db")).await.expect("open sqlite");
                TestStore { store: Arc::new(store), _dir: Some(dir) }
            }
        }
    }
}

/// An event of `event_type`, with `session` in its metadata when given.
pub fn event(event_type: &str, data: impl Into<Bytes>, session: Option<&str>) -> SerializedEvent {
    let mut metadata = EventMetadata::now().with_correlation_id("corr-1");
    if let Some(s) = session {
        metadata.headers.insert(composable_rust_web::SESSION_HEADER.to_owned(), s.to_owned());
    }
    SerializedEvent::new(event_type, data, Some(metadata))
}

/// Appends `events` to `stream` (any expected version).
pub async fn append(store: &dyn EventStore, stream: &str, events: Vec<SerializedEvent>) {
    store.append(AppendRequest::new(StreamId::new(stream).unwrap(), ExpectedVersion::Any, events)).await.expect("append");
}

/// Every stored event.
pub async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut after = composable_rust_core::GlobalPosition(0);
    loop {
        let page = store.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { return out };
        after = last.position;
        out.extend(page);
    }
}

/// Waits (at most [`PATIENCE`]) until `cond` holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connect(addr: SocketAddr, recv_buffer: Option<u32>) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)], recv_buffer: Option<u32>) -> hyper::Response<Incoming> {
    let mut sender = connect(addr, recv_buffer).await;
    let mut req = Request::builder().uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.send_request(req.body(Empty::new()).unwrap()).await.expect("request")
}

/// A plain GET: status, headers, body as text.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let response = request(addr, path, headers, None).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, String::from_utf8(body.to_vec()).expect("UTF-8 body"))
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data of {self:?} is not JSON: {e}"))
    }

    pub fn position(&self) -> u64 {
        self.id.parse().unwrap_or_else(|_| panic!("id of {self:?} is not a position"))
    }
}

/// An SSE connection, parsed like a browser's `EventSource` does.
pub struct SseClient {
    body: Incoming,
    buf: BytesMut,
    event_type: String,
    data: String,
    id_buffer: String,
    /// The last event id, as an `EventSource` keeps it (set by `id:` fields at dispatch time).
    pub last_event_id: String,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    /// `retry:` value seen.
    pub retry: Option<u64>,
    ended: bool,
}

impl SseClient {
    /// Opens `path`; panics unless the answer is a 200 `text/event-stream`.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::open_with(addr, path, headers, None).await
    }

    /// Like [`SseClient::open`], with a small socket receive buffer.
    pub async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)], recv_buffer: Option<u32>) -> SseClient {
        let response = request(addr, path, headers, recv_buffer).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseClient {
            body: response.into_body(),
            buf: BytesMut::new(),
            event_type: String::new(),
            data: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            comments: 0,
            retry: None,
            ended: false,
        }
    }

    /// The next dispatched event; `None` once the server ended the stream. Panics after
    /// [`PATIENCE`] without one.
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, self.next_unbounded()).await.expect("timed out waiting for an SSE event")
    }

    async fn next_unbounded(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(line) = self.take_line() {
                if let Some(event) = self.process_line(&line) {
                    return Some(event);
                }
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("SSE body failed: {e}"),
                None => self.ended = true,
            }
        }
    }

    /// Reads the preamble (`retry:` and `id:` with no data, then a blank line), and no further.
    pub async fn preamble(&mut self) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(line) = self.take_line() {
                    let blank = line.is_empty();
                    assert!(self.process_line(&line).is_none(), "an event before the preamble");
                    if blank {
                        assert!(self.retry.is_some(), "the preamble carries `retry:`");
                        return;
                    }
                    continue;
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                    other => panic!("stream ended before its preamble: {other:?}"),
                }
            }
        })
        .await
        .expect("timed out waiting for the preamble");
    }

    /// Reads until `n` comment lines (keep-alives) have arrived; panics on an event.
    pub async fn wait_for_comments(&mut self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            while self.comments < n {
                if let Some(line) = self.take_line() {
                    assert!(self.process_line(&line).is_none(), "an event while waiting for keep-alives");
                    continue;
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                    other => panic!("stream ended while waiting for keep-alives: {other:?}"),
                }
            }
        })
        .await
        .expect("timed out waiting for keep-alive comments");
    }

    /// The next `n` events (panics if the stream ends first).
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next().await {
                Some(e) => out.push(e),
                None => panic!("the stream ended after {} of {n} events", out.len()),
            }
        }
        out
    }

    fn take_line(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n' || b == b'\r')?;
        // A lone CR at the end of the buffer may be the first half of CRLF: wait for more.
        if self.buf[end] == b'\r' && end + 1 == self.buf.len() && !self.ended {
            return None;
        }
        let line = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8 SSE");
        let skip = if self.buf[end] == b'\r' && self.buf.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
        self.buf.advance(end + skip);
        Some(line)
    }

    fn process_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            // Dispatch.
            self.last_event_id = self.id_buffer.clone();
            let data = std::mem::take(&mut self.data);
            let event_type = std::mem::take(&mut self.event_type);
            if data.is_empty() {
                return None;
            }
            let data = data.strip_suffix('\n').unwrap_or(&data).to_owned();
            return Some(SseEvent { event: if event_type.is_empty() { "message".to_owned() } else { event_type }, id: self.last_event_id.clone(), data });
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        None
    }
}
