//! Dead letters: a record of work that failed for good, saying what failed and why, so nothing is
//! dropped silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use composable_rust_core::SerializedEvent;
use parking_lot::Mutex;

/// One piece of work that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// What failed, e.g. `append_events to order-7` or `saga checkout: event 5f..`.
    pub what: String,
    /// The final error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The event involved, if any (so it can be replayed by hand).
    pub event: Option<SerializedEvent>,
}

/// Where dead letters go. The runtime logs every dead letter with `tracing::error!` as well.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Records one dead letter.
    fn record(&self, letter: DeadLetter);
}

/// Keeps the most recent dead letters in memory (and counts all of them).
#[derive(Debug)]
pub struct InMemoryDeadLetters {
    capacity: usize,
    letters: Mutex<VecDeque<DeadLetter>>,
    total: AtomicU64,
}

impl InMemoryDeadLetters {
    /// Keeps at most `capacity` letters (older ones are dropped from memory, still counted).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), letters: Mutex::new(VecDeque::new()), total: AtomicU64::new(0) }
    }

    /// A copy of the letters kept.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().iter().cloned().collect()
    }

    /// How many letters were recorded in all.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Default for InMemoryDeadLetters {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl DeadLetterSink for InMemoryDeadLetters {
    fn record(&self, letter: DeadLetter) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut letters = self.letters.lock();
        if letters.len() == self.capacity {
            letters.pop_front();
        }
        letters.push_back(letter);
    }
}

pub(crate) fn dead_letter(sink: &dyn DeadLetterSink, what: String, error: String, attempts: u32, event: Option<SerializedEvent>) {
    tracing::error!(what = %what, error = %error, attempts, "dead letter");
    sink.record(DeadLetter { at: Utc::now(), what, error, attempts, event });
}
