//! Dead letters: a record of work that failed for good, saying what failed and why, so nothing is
//! dropped silently.
//!
//! There is one sink per application: the runtime's `Executor` records effects that failed for good
//! there, and every bus backend takes the same sink in its configuration (`dead_letters(...)`) and
//! records there the messages it gave up on (too many deliveries, not an event). The sink is a
//! trait, so it can be a log, a table or a queue; [`InMemoryDeadLetters`] keeps the latest ones in
//! memory, bounded, and is every backend's default.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::SerializedEvent;

/// One piece of work that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// What failed, e.g. `append_events to order-7`, `saga checkout: event 5f..` or
    /// `nats message on cr.order.events`.
    pub what: String,
    /// The final error.
    pub error: String,
    /// Attempts made (deliveries, for a bus message).
    pub attempts: u32,
    /// The event involved, if any (so it can be replayed by hand).
    pub event: Option<SerializedEvent>,
}

impl DeadLetter {
    /// A dead letter recorded now.
    pub fn now(what: impl Into<String>, error: impl Into<String>, attempts: u32, event: Option<SerializedEvent>) -> Self {
        Self { at: Utc::now(), what: what.into(), error: error.into(), attempts, event }
    }
}

/// Where dead letters go. Implementations must not block for long: backends record from their
/// consumer paths.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Records one dead letter.
    fn record(&self, letter: DeadLetter);
}

/// Keeps the most recent dead letters in memory (and counts all of them): bounded, whatever the
/// failure rate.
#[derive(Debug)]
pub struct InMemoryDeadLetters {
    capacity: usize,
    letters: Mutex<VecDeque<DeadLetter>>,
    total: AtomicU64,
}

impl InMemoryDeadLetters {
    /// How many letters [`InMemoryDeadLetters::default`] keeps.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// Keeps at most `capacity` letters (older ones are dropped from memory, still counted; a zero
    /// capacity keeps one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), letters: Mutex::new(VecDeque::new()), total: AtomicU64::new(0) }
    }

    /// A copy of the letters kept, oldest first.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.lock().iter().cloned().collect()
    }

    /// How many letters were recorded in all, including those no longer kept.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// How many letters are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<DeadLetter>> {
        // The lock is never held across a call that can panic halfway: a poisoned queue is whole.
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for InMemoryDeadLetters {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl DeadLetterSink for InMemoryDeadLetters {
    fn record(&self, letter: DeadLetter) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut letters = self.lock();
        if letters.len() >= self.capacity {
            letters.pop_front();
        }
        letters.push_back(letter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(n: u32) -> DeadLetter {
        DeadLetter::now(format!("work {n}"), "failed", n, None)
    }

    #[test]
    fn keeps_the_latest_and_counts_all() {
        let sink = InMemoryDeadLetters::new(3);
        for n in 0..10 {
            sink.record(letter(n));
        }
        let kept: Vec<u32> = sink.letters().iter().map(|l| l.attempts).collect();
        assert_eq!(kept, [7, 8, 9], "bounded, the oldest dropped first");
        assert_eq!(sink.total(), 10);
        assert_eq!(InMemoryDeadLetters::new(0).capacity(), 1, "a zero capacity still keeps the latest");
        assert_eq!(InMemoryDeadLetters::default().capacity(), InMemoryDeadLetters::DEFAULT_CAPACITY);
    }
}
