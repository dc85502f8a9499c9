//! Messages the bus acknowledged past without delivering them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A message that was not a composable-rust event (no `cr-event-type` header, bad metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it was not delivered.
    pub reason: String,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    letters: Mutex<VecDeque<DeadLetter>>,
    total: AtomicU64,
}

/// The latest dead letters of one bus, oldest first (at most `capacity`; older ones are dropped and
/// only counted). Clones share the record.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetters(Arc<Inner>);

impl DeadLetters {
    pub(crate) fn new(capacity: usize) -> Self {
        Self(Arc::new(Inner { capacity: capacity.max(1), letters: Mutex::new(VecDeque::new()), total: AtomicU64::new(0) }))
    }

    pub(crate) fn push(&self, letter: DeadLetter) {
        self.0.total.fetch_add(1, Ordering::Relaxed);
        let mut letters = self.0.letters.lock();
        if letters.len() >= self.0.capacity {
            letters.pop_front();
        }
        letters.push_back(letter);
    }

    pub(crate) fn snapshot(&self) -> Vec<DeadLetter> {
        self.0.letters.lock().iter().cloned().collect()
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64) -> DeadLetter {
        DeadLetter { topic: "t".into(), partition: 0, offset, reason: "no cr-event-type header".into() }
    }

    #[test]
    fn the_record_keeps_the_latest_and_counts_all() {
        let dead = DeadLetters::new(3);
        for offset in 0..10 {
            dead.clone().push(letter(offset));
        }
        assert_eq!(dead.snapshot(), vec![letter(7), letter(8), letter(9)], "bounded, oldest dropped first");
        assert_eq!(dead.total(), 10);
    }
}
