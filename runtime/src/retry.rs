//! Bounded retries with exponential backoff, for errors that say they are retryable.

use std::time::Duration;

/// How often and how patiently a retryable failure is retried before it is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further attempt.
    pub initial_backoff: Duration,
    /// Upper bound of one delay.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// No retries.
    pub const NONE: RetryPolicy = RetryPolicy { max_attempts: 1, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO };

    /// The delay before attempt `attempt + 1`, given that `attempt` (1-based) just failed.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

impl Default for RetryPolicy {
    /// 4 attempts, 50 ms doubling to at most 1 s: a few seconds in all, enough to ride out a broker
    /// restart, short enough not to hold a saga step for long.
    fn default() -> Self {
        Self { max_attempts: 4, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy { max_attempts: 10, initial_backoff: Duration::from_millis(10), max_backoff: Duration::from_millis(50) };
        assert_eq!(p.backoff_after(1), Duration::from_millis(10));
        assert_eq!(p.backoff_after(2), Duration::from_millis(20));
        assert_eq!(p.backoff_after(3), Duration::from_millis(40));
        assert_eq!(p.backoff_after(4), Duration::from_millis(50));
        assert_eq!(p.backoff_after(60), Duration::from_millis(50));
    }
}
