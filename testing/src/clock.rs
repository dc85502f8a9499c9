//! [`TestClock`]: virtual time that moves only when the test says so.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use composable_rust_core::Clock;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

struct Sleeper {
    deadline: DateTime<Utc>,
    seq: u64,
    wake: oneshot::Sender<()>,
}

struct Inner {
    now: DateTime<Utc>,
    sleepers: Vec<Sleeper>,
    next_seq: u64,
}

/// A [`Clock`] for tests: `sleep` completes only when [`TestClock::advance`] moves time past its
/// deadline, in deadline order. Clones share the same time.
#[derive(Clone)]
pub struct TestClock {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for TestClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("TestClock").field("now", &inner.now).field("sleepers", &inner.sleepers.len()).finish()
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClock {
    /// A clock at 2024-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::at(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("valid date"))
    }

    /// A clock at `now`.
    pub fn at(now: DateTime<Utc>) -> Self {
        Self { inner: Arc::new(Mutex::new(Inner { now, sleepers: Vec::new(), next_seq: 0 })) }
    }

    /// Sleeps not yet woken.
    pub fn pending_sleepers(&self) -> usize {
        self.inner.lock().sleepers.len()
    }

    /// Moves time forward by `by`, waking sleepers in deadline order and letting the woken tasks run
    /// (a sleeper they start within the window is woken too).
    pub async fn advance(&self, by: Duration) {
        // Effects spawned just before register their sleeps only once they run.
        settle().await;
        let target = self.inner.lock().now + chrono::Duration::from_std(by).expect("duration fits");
        loop {
            let due = {
                let mut inner = self.inner.lock();
                let next = inner.sleepers.iter().enumerate().filter(|(_, s)| s.deadline <= target).min_by_key(|(_, s)| (s.deadline, s.seq)).map(|(i, _)| i);
                if let Some(i) = next {
                    let sleeper = inner.sleepers.swap_remove(i);
                    inner.now = inner.now.max(sleeper.deadline);
                    Some(sleeper)
                } else {
                    inner.now = target;
                    None
                }
            };
            let Some(sleeper) = due else { break };
            let _ = sleeper.wake.send(());
            settle().await;
        }
        settle().await;
    }
}

struct Deregister {
    inner: std::sync::Weak<Mutex<Inner>>,
    seq: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().sleepers.retain(|s| s.seq != self.seq);
        }
    }
}

/// Lets other tasks on the (current-thread) test runtime run until they block.
pub(crate) async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.lock().now
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration.is_zero() {
            return futures::future::ready(()).boxed();
        }
        let (wake, woken) = oneshot::channel();
        let seq = {
            let mut inner = self.inner.lock();
            let deadline = inner.now + chrono::Duration::from_std(duration).expect("duration fits");
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.sleepers.push(Sleeper { deadline, seq, wake });
            seq
        };
        // A sleep dropped before it was woken (a cancelled delay) leaves the clock's list.
        let guard = Deregister { inner: Arc::downgrade(&self.inner), seq };
        async move {
            // A dropped clock never wakes its sleepers; that is what an unadvanced clock means.
            let _ = woken.await;
            drop(guard);
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleepers_wake_in_deadline_order_only_when_advanced() {
        let clock = TestClock::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        for (name, ms) in [("b", 20u64), ("a", 10), ("c", 30)] {
            let (clock, order) = (clock.clone(), Arc::clone(&order));
            tokio::spawn(async move {
                clock.sleep(Duration::from_millis(ms)).await;
                order.lock().push(name);
            });
        }
        settle().await;
        assert_eq!(clock.pending_sleepers(), 3);
        clock.advance(Duration::from_millis(15)).await;
        assert_eq!(*order.lock(), vec!["a"]);
        clock.advance(Duration::from_millis(15)).await;
        assert_eq!(*order.lock(), vec!["a", "b", "c"]);
        assert_eq!(clock.pending_sleepers(), 0);
    }

    /// A long run of cancelled timers (a debounce, a delay cancelled by its instance) leaves no
    /// sleeper behind: the clock holds only the sleeps still awaited.
    #[tokio::test]
    async fn dropped_sleeps_leave_the_clock() {
        let clock = TestClock::new();
        for _ in 0..1_000 {
            let never_polled = clock.sleep(Duration::from_secs(60));
            drop(never_polled);
            let task = tokio::spawn(clock.sleep(Duration::from_secs(60)));
            settle().await;
            task.abort();
            let _ = task.await;
        }
        assert_eq!(clock.pending_sleepers(), 0, "{clock:?}");
        let kept = clock.sleep(Duration::from_secs(1));
        assert_eq!(clock.pending_sleepers(), 1);
        clock.advance(Duration::from_secs(1)).await;
        kept.await;
        assert_eq!(clock.pending_sleepers(), 0, "a woken sleep leaves too");
    }
}
