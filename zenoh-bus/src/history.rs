//! Retained events for late subscribers, served over Zenoh queries.
//!
//! A bus with [`ZenohConfig::history`](crate::ZenohConfig::history) keeps its latest published
//! samples (key, payload, attachment) in a ring and answers `get` queries on `events/**` and
//! `sessions/**` with those whose key matches the query. A subscriber with
//! [`ZenohConfig::replay_history`](crate::ZenohConfig::replay_history) sends such a query for each of
//! its key expressions right after declaring its subscribers, so nothing falls between the replay
//! and the live samples; events that come both ways are delivered once (by event id).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::key_expr::KeyExpr;
use zenoh::query::Queryable;

use crate::keys::{EVENTS_ROOT, SESSIONS_ROOT};

type Retained = (KeyExpr<'static>, ZBytes, ZBytes);

/// The ring of retained samples and the queryables that serve it.
pub(crate) struct History {
    ring: Arc<Mutex<VecDeque<Retained>>>,
    capacity: usize,
    _queryables: Vec<Queryable<()>>,
}

impl History {
    pub(crate) fn serve(session: &zenoh::Session, capacity: usize) -> Result<Self, String> {
        let ring: Arc<Mutex<VecDeque<Retained>>> = Arc::default();
        let mut queryables = Vec::new();
        for root in [EVENTS_ROOT, SESSIONS_ROOT] {
            let ring = Arc::clone(&ring);
            let queryable = session
                .declare_queryable(format!("{root}/**"))
                .callback(move |query| {
                    // Copy out first: replying to a local query runs the asker's callback.
                    let matching: Vec<Retained> = ring.lock().iter().filter(|(key, ..)| query.key_expr().intersects(key)).cloned().collect();
                    for (key, payload, attachment) in matching {
                        if let Err(e) = query.reply(key, payload).attachment(attachment).wait() {
                            tracing::warn!(error = %e, "zenoh history reply failed");
                        }
                    }
                })
                .wait()
                .map_err(|e| format!("cannot serve history on {root}/**: {e}"))?;
            queryables.push(queryable);
        }
        Ok(Self { ring, capacity: capacity.max(1), _queryables: queryables })
    }

    pub(crate) fn retain(&self, key: &str, payload: &ZBytes, attachment: &ZBytes) {
        let Ok(key) = KeyExpr::try_from(key.to_owned()) else { return };
        let mut ring = self.ring.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back((key, payload.clone(), attachment.clone()));
    }
}

/// Event ids delivered lately by a replaying subscription, so an event that arrives both live and
/// replayed is delivered once.
#[derive(Default)]
pub(crate) struct RecentIds {
    order: VecDeque<Uuid>,
    seen: HashSet<Uuid>,
}

/// Enough to cover one replay plus the live events that race it.
const RECENT_IDS: usize = 65_536;

impl RecentIds {
    /// `true` the first time `id` is seen.
    pub(crate) fn first_time(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}
