//! The one reader of the store per process: a task that reads the global log after its last
//! position (through `read_all`, so with the store's own no-gap read horizon: an event committed
//! late is read when it becomes readable, never skipped), encodes each event once, and fans the
//! batches out to every connected client through one bounded broadcast channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use composable_rust_core::{EventStore, GlobalPosition};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};

use crate::frame::{Encoder, FeedBatch};

/// Where the tail stands (see [`Feeds::status`](crate::Feeds::status)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailStatus {
    /// Every event up to here has been read and sent to the connected clients.
    pub position: GlobalPosition,
    /// How long ago the last read of the store succeeded.
    pub since_last_read: Duration,
    /// The error of the last read, when it failed.
    pub last_error: Option<String>,
    /// Whether the last successful read is older than the configured threshold.
    pub stalled: bool,
}

struct State {
    position: GlobalPosition,
    last_ok: Instant,
    last_error: Option<String>,
}

pub(crate) struct Tail {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) encoder: Encoder,
    sender: broadcast::Sender<Arc<FeedBatch>>,
    state: Mutex<State>,
    wake: Notify,
    poll: Duration,
    batch: usize,
    stall_after: Duration,
}

impl Tail {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        encoder: Encoder,
        after: GlobalPosition,
        capacity: usize,
        poll: Duration,
        batch: usize,
        stall_after: Duration,
    ) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            store,
            encoder,
            sender,
            state: Mutex::new(State { position: after, last_ok: Instant::now(), last_error: None }),
            wake: Notify::new(),
            poll: poll.max(Duration::from_millis(1)),
            batch: batch.max(1),
            stall_after,
        }
    }

    /// A receiver of every batch after the returned position, and that position: taken under the
    /// lock the tail sends under, so nothing falls between the two.
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Arc<FeedBatch>>, GlobalPosition) {
        let state = self.state.lock();
        (self.sender.subscribe(), state.position)
    }

    pub(crate) fn position(&self) -> GlobalPosition {
        self.state.lock().position
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn status(&self) -> TailStatus {
        let state = self.state.lock();
        let since_last_read = state.last_ok.elapsed();
        TailStatus { position: state.position, since_last_read, last_error: state.last_error.clone(), stalled: since_last_read > self.stall_after }
    }

    /// Reads and fans out until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        const MAX_BACKOFF: Duration = Duration::from_secs(2);
        let errors = metrics::counter!(crate::metrics::SSE_TAIL_READ_ERRORS);
        let mut backoff = self.poll;
        loop {
            let after = self.state.lock().position;
            match self.store.read_all(after, self.batch).await {
                Ok(events) => {
                    backoff = self.poll;
                    let full = events.len() >= self.batch;
                    let batch = (!events.is_empty()).then(|| Arc::new(self.encoder.batch(&events)));
                    {
                        let mut state = self.state.lock();
                        state.last_ok = Instant::now();
                        state.last_error = None;
                        if let Some(batch) = batch {
                            state.position = batch.last_position();
                            // No receiver is not an error: nobody is listening right now.
                            let _ = self.sender.send(batch);
                        }
                    }
                    if full {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.poll) => {}
                        () = self.wake.notified() => {}
                    }
                }
                Err(e) => {
                    errors.increment(1);
                    tracing::warn!(error = %e, after = after.0, retry_in_ms = backoff.as_millis(), "feed tail: reading the store failed; retrying");
                    self.state.lock().last_error = Some(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
