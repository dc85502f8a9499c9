//! [`StoreSubscription`]: the global log from a checkpoint, filtered, in commit order: catch-up in
//! batches, then the live tail, with no gap and no duplicate at the switch.
//!
//! There is no separate "live" channel to switch to: the subscription keeps reading the store after
//! its position, through [`EventStore::read_all_filtered`] (the stores' no-gap rule: an event
//! committed late is never skipped), and waits on the clock only when it has seen everything. So the
//! switch from catch-up to live cannot lose or repeat an event: it is the same read.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{Clock, EventFilter, EventStore, EventStoreError, GlobalPosition, RecordedEvent};

use crate::clock::SystemClock;
use crate::metrics::LagGauges;

/// A store-fed subscription (see the module docs).
pub struct StoreSubscription {
    store: Arc<dyn EventStore>,
    filter: EventFilter,
    position: GlobalPosition,
    batch: usize,
    poll: Duration,
    clock: Arc<dyn Clock>,
    /// The lag gauges of a named subscription.
    lag_gauges: Option<LagGauges>,
}

impl StoreSubscription {
    /// Every event of `store` matching `filter`, from the start of the log; batches of 512; a
    /// caught-up subscription looks again every 20 ms on the system clock.
    pub fn new(store: Arc<dyn EventStore>, filter: EventFilter) -> Self {
        Self { store, filter, position: GlobalPosition(0), batch: 512, poll: Duration::from_millis(20), clock: Arc::new(SystemClock), lag_gauges: None }
    }

    /// Starts after `position` (a checkpoint: the last position handled).
    #[must_use]
    pub fn after(mut self, position: GlobalPosition) -> Self {
        self.position = position;
        self
    }

    /// Reads up to `n` events per batch (at least 1).
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How long a caught-up subscription waits before it looks again, on `clock`.
    #[must_use]
    pub fn poll(mut self, every: Duration, clock: Arc<dyn Clock>) -> Self {
        self.poll = every.max(Duration::from_millis(1));
        self.clock = clock;
        self
    }

    /// Names the subscription in the lag metrics ([`crate::metrics::SUBSCRIPTION_LAG_EVENTS`] and
    /// [`crate::metrics::SUBSCRIPTION_LAG_SECONDS`], set by every [`StoreSubscription::status`]
    /// call). Unnamed subscriptions record none.
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.lag_gauges = Some(LagGauges::subscription(name));
        self
    }

    /// The filter.
    pub fn filter(&self) -> &EventFilter {
        &self.filter
    }

    /// Everything up to here was returned (or filtered out).
    pub fn position(&self) -> GlobalPosition {
        self.position
    }

    /// The next events, at least one: waits while there is nothing new. Cancel-safe: dropping the
    /// future loses nothing (the position only moves when a batch is returned).
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventStoreError> {
        loop {
            let page = self.try_next_batch().await?;
            if !page.is_empty() {
                return Ok(page);
            }
            self.clock.sleep(self.poll).await;
        }
    }

    /// One read: the next matching events, or none if there is nothing new right now.
    pub async fn try_next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventStoreError> {
        loop {
            let page = self.store.read_all_filtered(self.position, self.batch, &self.filter).await?;
            let moved = page.scanned_to > self.position;
            self.position = self.position.max(page.scanned_to);
            if !page.events.is_empty() || !moved {
                return Ok(page.events);
            }
            // A whole page filtered out: read on at once.
        }
    }

    /// Where this subscription stands against the store's head.
    pub async fn status(&self) -> Result<SubscriptionStatus, EventStoreError> {
        let head = self.store.head().await?;
        let lag = time_lag(&*self.store, self.position, head).await?;
        let status = SubscriptionStatus { position: self.position, head, lag_events: head.0.saturating_sub(self.position.0), lag };
        if let Some(gauges) = &self.lag_gauges {
            gauges.set(status.lag_events, status.lag);
        }
        Ok(status)
    }
}

/// How long the first event after `position` has waited (now minus its timestamp): the lag in
/// time a subscriber or projection at `position` reports. Zero when caught up (nothing after
/// `position` up to `head`).
pub(crate) async fn time_lag(store: &dyn EventStore, position: GlobalPosition, head: GlobalPosition) -> Result<Duration, EventStoreError> {
    if head <= position {
        return Ok(Duration::ZERO);
    }
    let first_unhandled = store.read_all(position, 1).await?;
    Ok(first_unhandled.first().map_or(Duration::ZERO, |e| (chrono::Utc::now() - e.event.metadata.timestamp).to_std().unwrap_or(Duration::ZERO)))
}

/// A subscription's position against the store's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// Last position handled.
    pub position: GlobalPosition,
    /// The store's head.
    pub head: GlobalPosition,
    /// Events between them (an upper bound: positions may have holes, filtered events count).
    pub lag_events: u64,
    /// How long the first event after the position has waited (zero when caught up).
    pub lag: Duration,
}
