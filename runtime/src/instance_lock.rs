//! One lock per aggregate instance, held while a command is loaded, decided and appended.
//!
//! Commands racing for one instance in the same process would otherwise all load the same version,
//! all but one fail their append with a concurrency conflict, and load the whole stream again: on a
//! hot instance (a stock item every order reserves) most of the store's work went into those
//! retries. Taking turns in-process leaves conflicts to other processes only. An entry lives only
//! while someone holds or waits for it, so the map holds at most as many instances as commands are
//! in hand.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The per-instance locks of one handler.
#[derive(Debug, Default)]
pub(crate) struct InstanceLocks {
    held: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds instance `id`'s turn until dropped.
pub(crate) struct InstanceTurn<'a> {
    locks: &'a InstanceLocks,
    id: String,
    lock: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl InstanceLocks {
    /// Waits for instance `id`'s turn. Dropping the future while it waits gives the place up.
    pub(crate) async fn turn(&self, id: &str) -> InstanceTurn<'_> {
        let lock = Arc::clone(self.held.lock().entry(id.to_owned()).or_default());
        // The turn exists before the wait, so a cancelled wait still cleans the entry up.
        let mut turn = InstanceTurn { locks: self, id: id.to_owned(), lock, guard: None };
        turn.guard = Some(Arc::clone(&turn.lock).lock_owned().await);
        turn
    }

    /// Instances someone holds or waits for.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.lock().len()
    }
}

impl Drop for InstanceTurn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut held = self.locks.held.lock();
        // Counted under the map's lock, where every new waiter takes its clone: two references
        // (the map's and ours) mean nobody else holds or waits.
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_instance_takes_turns_and_others_go_on() {
        let locks = Arc::new(InstanceLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (locks, inside, most) = (Arc::clone(&locks), Arc::clone(&inside), Arc::clone(&most));
            tasks.push(tokio::spawn(async move {
                let _turn = locks.turn("a").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // Another instance is not held up by "a".
        let other = locks.turn("b").await;
        drop(other);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two commands for one instance were in hand at once");
        assert_eq!(locks.len(), 0, "entries outlived their turns");
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_no_entry() {
        let locks = InstanceLocks::default();
        let held = locks.turn("a").await;
        let waiting = tokio::time::timeout(Duration::from_millis(5), locks.turn("a")).await;
        assert!(waiting.is_err(), "the second turn did not wait");
        drop(held);
        assert_eq!(locks.len(), 0);
    }
}
