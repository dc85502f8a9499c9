//! [`Lanes`]: runs work items concurrently across keys and strictly in arrival order within a key,
//! with a bound on the items in hand. The saga runner uses it so that steps of different instances
//! run side by side while steps of one instance keep their delivery order.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tracker::Tracker;

/// The work of one item.
pub type Handler<T> = Arc<dyn Fn(T) -> BoxFuture<'static, ()> + Send + Sync>;

struct Inner<K, T> {
    lanes: Mutex<HashMap<K, VecDeque<(T, OwnedSemaphorePermit)>>>,
    slots: Arc<Semaphore>,
    max_in_hand: usize,
    handler: Handler<T>,
    running: Tracker,
}

/// Keyed lanes of work (see the module docs). Cheap to clone.
pub struct Lanes<K, T> {
    inner: Arc<Inner<K, T>>,
}

impl<K, T> Clone for Lanes<K, T> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<K, T> Lanes<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    /// Lanes running `handler` on each item, with at most `max_in_hand` items queued or running.
    pub fn new(max_in_hand: usize, handler: Handler<T>) -> Self {
        Self {
            inner: Arc::new(Inner {
                lanes: Mutex::new(HashMap::new()),
                slots: Arc::new(Semaphore::new(max_in_hand.max(1))),
                max_in_hand: max_in_hand.max(1),
                handler,
                running: Tracker::new(),
            }),
        }
    }

    /// Queues `item` behind the items of the same `key`; waits while `max_in_hand` items are in hand
    /// (back-pressure on whoever feeds the lanes).
    pub async fn push(&self, key: K, item: T) {
        let Ok(permit) = Arc::clone(&self.inner.slots).acquire_owned().await else { return };
        let start = {
            let mut lanes = self.inner.lanes.lock();
            if let Some(queue) = lanes.get_mut(&key) {
                queue.push_back((item, permit));
                false
            } else {
                lanes.insert(key.clone(), VecDeque::from([(item, permit)]));
                true
            }
        };
        if start {
            let inner = Arc::clone(&self.inner);
            let guard = inner.running.enter();
            tokio::spawn(async move {
                Self::drain(&inner, &key).await;
                drop(guard);
            });
        }
    }

    /// Runs a lane's items one after the other until it is empty, then removes it (under the lock,
    /// so that an item pushed meanwhile either lands before the removal or starts a new lane).
    async fn drain(inner: &Inner<K, T>, key: &K) {
        loop {
            let next = {
                let mut lanes = inner.lanes.lock();
                let Some(queue) = lanes.get_mut(key) else { return };
                let next = queue.pop_front();
                if next.is_none() {
                    lanes.remove(key);
                }
                next
            };
            let Some((item, permit)) = next else { return };
            // A panicking handler must not leave its lane (and its slots) behind for good.
            if let Err(panic) = AssertUnwindSafe((inner.handler)(item)).catch_unwind().await {
                tracing::error!(message = %crate::executor::panic_message(&*panic), "a lane's handler panicked; the lane goes on");
            }
            drop(permit);
        }
    }

    /// Items queued or running.
    pub fn in_hand(&self) -> usize {
        self.inner.max_in_hand - self.inner.slots.available_permits()
    }

    /// Waits until every lane is empty and no item is running.
    pub async fn idle(&self) {
        self.inner.running.idle().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_key_in_order_different_keys_side_by_side() {
        let log: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
        let sink = Arc::clone(&log);
        let handler: Handler<(u32, u32)> = Arc::new(move |(key, n)| {
            let sink = Arc::clone(&sink);
            async move {
                // Key 1's first item is slow: key 2 must not wait for it, key 1's second must.
                if (key, n) == (1, 0) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sink.lock().push((key, n));
            }
            .boxed()
        });
        let lanes = Lanes::new(16, handler);
        for item in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            lanes.push(item.0, item).await;
        }
        lanes.idle().await;
        let log = log.lock().clone();
        assert_eq!(log.iter().filter(|(k, _)| *k == 1).collect::<Vec<_>>(), vec![&(1, 0), &(1, 1)], "one key in order");
        assert_eq!(&log[..2], &[(2, 0), (2, 1)], "the other key did not wait: {log:?}");
    }

    #[tokio::test]
    async fn at_most_max_in_hand_items_are_held() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = Arc::clone(&gate);
        let handler: Handler<u32> = Arc::new(move |_| {
            let g = Arc::clone(&g);
            async move { g.notified().await }.boxed()
        });
        let lanes = Lanes::new(2, handler);
        lanes.push(1, 1).await;
        lanes.push(2, 2).await;
        let third = tokio::time::timeout(Duration::from_millis(50), lanes.push(3, 3)).await;
        assert!(third.is_err(), "a third item waits for a free slot");
        gate.notify_waiters();
    }
}
