//! The wall clock used outside tests.

use std::time::Duration;

use chrono::{DateTime, Utc};
use composable_rust_core::Clock;
use futures::FutureExt;
use futures::future::BoxFuture;

/// Real time: `chrono::Utc::now` and `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(duration).boxed()
    }
}
