//! Dead letters: a record of work that failed for good, saying what failed and why, so nothing is
//! dropped silently.
//!
//! The types live in `composable-rust-core` (so that every backend reports into the same sink as
//! the runtime) and are re-exported here under their old paths.

use chrono::Utc;
use composable_rust_core::SerializedEvent;

pub use composable_rust_core::dead_letter::{DeadLetter, DeadLetterSink, InMemoryDeadLetters};

pub(crate) fn dead_letter(sink: &dyn DeadLetterSink, what: String, error: String, attempts: u32, event: Option<SerializedEvent>) {
    tracing::error!(what = %what, error = %error, attempts, "dead letter");
    crate::metrics::dead_letter();
    sink.record(DeadLetter { at: Utc::now(), what, error, attempts, event });
}
