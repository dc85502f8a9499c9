//! Counting work in flight so that callers can await "everything this action started".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts pending actions and running effect tasks; completes waiters when the count drops to zero.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    count: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    /// A tracker with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one unit of work; it ends when the guard drops.
    pub fn enter(&self) -> TrackerGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        TrackerGuard { tracker: self.clone() }
    }

    /// Units of work in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One unit of work registered with a [`Tracker`].
#[derive(Debug)]
pub struct TrackerGuard {
    tracker: Tracker,
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.tracker.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tracker.inner.idle.notify_waiters();
        }
    }
}
