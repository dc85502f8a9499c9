//! Time as a dependency, so that `Delay`, timeouts and retry backoff run on virtual time in tests.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

/// A source of time. The runtime uses a tokio-backed clock; tests use `TestClock` from
/// `composable-rust-testing`, which only moves when the test advances it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// A future that completes after `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}
