//! Instances kept in memory between the commands or steps that use them, least recently used
//! evicted first.
//!
//! An instance is *taken* out while its turn decides and *kept* again only once its new events
//! are stored, so a failed or refused write never leaves a state the store does not have. The
//! store stays the authority: a decision taken on a kept instance is appended with the kept
//! version, and a stream that moved on without this process answers with a conflict, after which
//! the caller loads afresh.

use lru::LruCache;
use parking_lot::Mutex;

/// Instances kept by default by an aggregate handler or a saga worker.
pub(crate) const DEFAULT_KEPT: usize = 10_000;

/// Up to a capacity of instances by id (none with capacity 0).
pub(crate) struct Kept<T> {
    // Unbounded to the crate and capped here: a bounded `LruCache` allocates its whole capacity up
    // front, for handlers that may never keep more than a few instances.
    cache: Option<Mutex<LruCache<String, T>>>,
    capacity: usize,
}

impl<T> Kept<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { cache: (capacity > 0).then(|| Mutex::new(LruCache::unbounded())), capacity }
    }

    /// Takes instance `id` out, if kept.
    pub(crate) fn take(&self, id: &str) -> Option<T> {
        self.cache.as_ref().and_then(|c| c.lock().pop(id))
    }

    /// Keeps `instance` as `id`'s current state.
    pub(crate) fn keep(&self, id: &str, instance: T) {
        if let Some(cache) = &self.cache {
            let mut cache = cache.lock();
            cache.put(id.to_owned(), instance);
            while cache.len() > self.capacity {
                cache.pop_lru();
            }
        }
    }

    /// Instances kept now.
    pub(crate) fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.lock().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first_and_capacity_zero_keeps_nothing() {
        let kept = Kept::new(2);
        kept.keep("a", 1);
        kept.keep("b", 2);
        kept.keep("c", 3);
        assert_eq!((kept.len(), kept.take("a"), kept.take("c")), (2, None, Some(3)));
        assert_eq!(kept.take("c"), None, "taken out while in use");
        let none = Kept::new(0);
        none.keep("a", 1);
        assert_eq!((none.len(), none.take("a")), (0, None));
    }
}
