//! Serving feeds: a TCP listener tuned for many long-lived connections of small writes.
//!
//! - `TCP_NODELAY`: an SSE event is a small write. Without it, Nagle's algorithm holds a write
//!   while an earlier one is unacknowledged, and the client acknowledges late (delayed ACK, up to
//!   40 ms on Linux): every event waits, and a busy server falls behind. `axum::serve` leaves it
//!   off.
//! - A bounded send buffer (optional, [`SseListener::with_send_buffer`]): the kernel grows each
//!   connection's send buffer up to megabytes (`net.ipv4.tcp_wmem`) when its client reads slowly.
//!   With thousands of clients that memory adds up to the kernel's TCP memory limits
//!   (`net.ipv4.tcp_mem`), and under that pressure the kernel drops packets and every connection
//!   slows down. A small buffer keeps a slow client's backlog in the feed's shared broadcast
//!   instead (where it costs nothing per client, and a client too far behind is reset), at the
//!   price of the throughput one connection can reach over a long round trip (buffer / RTT).

use std::net::SocketAddr;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};

/// A listener for `axum::serve(SseListener::new(listener), app)`: `TCP_NODELAY` on every accepted
/// connection, and optionally a fixed send buffer (see the module docs).
#[derive(Debug)]
pub struct SseListener {
    inner: TcpListener,
    send_buffer: Option<usize>,
}

impl SseListener {
    /// `listener`, with `TCP_NODELAY` on each accepted connection and the kernel's send buffer.
    pub fn new(listener: TcpListener) -> Self {
        Self { inner: listener, send_buffer: None }
    }

    /// Fixes each connection's send buffer (`SO_SNDBUF`) at `bytes` (Linux doubles it for its own
    /// bookkeeping), instead of letting the kernel grow it. 64 KiB carries 1,000 events/s of
    /// 300-byte frames over any round trip under about 200 ms.
    #[must_use]
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = Some(bytes);
        self
    }

    fn tune(&self, tcp: &TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY on an accepted connection; its events may be delayed");
        }
        if let Some(bytes) = self.send_buffer {
            if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(bytes) {
                tracing::warn!(error = %e, bytes, "could not set SO_SNDBUF on an accepted connection");
            }
        }
    }
}

impl Listener for SseListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.inner).await;
        self.tune(&tcp);
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
