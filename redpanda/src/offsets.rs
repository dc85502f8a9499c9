//! Which offset of each partition may be committed: the first one not yet acknowledged.
//!
//! Deliveries of one partition are handed out in offset order but may be acknowledged in any order.
//! Committing offset `n` tells the group "everything before `n` is done", so the committable offset
//! is the smallest delivered-but-unacknowledged offset, or one past the last delivered when all are
//! acknowledged. A partition that is revoked is forgotten; acknowledgements that arrive for it
//! afterwards belong to an old assignment (generation) and change nothing.

use std::collections::{BTreeSet, HashMap};

/// A topic and partition.
pub type PartitionKey = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    pending: BTreeSet<i64>,
    delivered_up_to: Option<i64>,
    stored: Option<i64>,
}

impl Partition {
    fn committable(&self) -> Option<i64> {
        self.pending.first().copied().or(self.delivered_up_to)
    }
}

/// Per-partition progress of one consumer.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<PartitionKey, Partition>,
    next_generation: u64,
}

impl OffsetTracker {
    /// Records that `offset` was handed to the consumer; returns the generation its ack must carry.
    pub fn delivered(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        let key = (topic.to_owned(), partition);
        if !self.partitions.contains_key(&key) {
            self.next_generation += 1;
            // Resuming at the first delivered offset is where the group already is: nothing to store.
            self.partitions.insert(key.clone(), Partition { generation: self.next_generation, stored: Some(offset), ..Partition::default() });
        }
        let p = self.partitions.get_mut(&key).expect("inserted above");
        p.pending.insert(offset);
        p.delivered_up_to = Some(p.delivered_up_to.map_or(offset + 1, |d| d.max(offset + 1)));
        p.generation
    }

    /// Records an acknowledgement; returns the offset to store when the committable offset moved.
    pub fn acked(&mut self, topic: &str, partition: i32, offset: i64, generation: u64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if p.generation != generation || !p.pending.remove(&offset) {
            return None;
        }
        let committable = p.committable()?;
        if p.stored.is_some_and(|s| s >= committable) {
            return None;
        }
        p.stored = Some(committable);
        Some(committable)
    }

    /// Forgets partitions that were revoked.
    pub fn revoked(&mut self, partitions: &[PartitionKey]) {
        for key in partitions {
            self.partitions.remove(key);
        }
    }

    /// Deliveries not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_commit_only_the_done_prefix() {
        let mut t = OffsetTracker::default();
        let g = t.delivered("t", 0, 10);
        t.delivered("t", 0, 11);
        t.delivered("t", 0, 12);
        assert_eq!(t.acked("t", 0, 11, g), None, "10 is still in flight");
        assert_eq!(t.acked("t", 0, 10, g), Some(12), "10 and 11 done: resume at 12");
        assert_eq!(t.acked("t", 0, 12, g), Some(13));
        assert_eq!(t.acked("t", 0, 12, g), None, "a second ack changes nothing");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn acks_from_a_revoked_assignment_are_ignored() {
        let mut t = OffsetTracker::default();
        let old = t.delivered("t", 1, 5);
        t.revoked(&[("t".into(), 1)]);
        assert_eq!(t.acked("t", 1, 5, old), None);
        let new = t.delivered("t", 1, 5);
        assert_ne!(old, new);
        assert_eq!(t.acked("t", 1, 5, old), None, "the old generation's ack must not commit the new delivery");
        assert_eq!(t.acked("t", 1, 5, new), Some(6));
    }

    proptest! {
        /// Whatever the ack order, the stored offset never passes an unacknowledged delivery and
        /// ends one past the last delivery.
        #[test]
        fn never_commits_past_an_unacked_offset(order in Just((0..20i64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = OffsetTracker::default();
            let g = (0..20).map(|o| t.delivered("t", 0, o)).last().unwrap();
            let mut acked = BTreeSet::new();
            let mut last = None;
            for o in order {
                acked.insert(o);
                if let Some(stored) = t.acked("t", 0, o, g) {
                    prop_assert!((0..stored).all(|x| acked.contains(&x)), "stored {stored} with {acked:?} acked");
                    last = Some(stored);
                }
            }
            prop_assert_eq!(last, Some(20));
        }
    }
}
