//! Messages the bus acknowledged past without delivering them.

use std::sync::Arc;

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

/// The dead letters of one bus, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadLetters(Arc<Mutex<Vec<DeadLetter>>>);

impl DeadLetters {
    pub(crate) fn push(&self, letter: DeadLetter) {
        self.0.lock().push(letter);
    }

    pub(crate) fn snapshot(&self) -> Vec<DeadLetter> {
        self.0.lock().clone()
    }
}
