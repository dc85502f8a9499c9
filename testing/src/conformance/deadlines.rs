//! The deadline-store conformance suite: what every [`EventStore`] guarantees about deadlines
//! (scheduled, cancelled and fired atomically with an append; found by due time; claimed by one
//! worker at a time; ended by `complete_deadline`). Every case panics with an explanation on failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use composable_rust_core::{
    AppendRequest, DeadlineChange, DeadlineOwner, EventStore, EventStoreError, ExpectedVersion, SerializedEvent, StoredDeadline, StreamId, Version,
};
use uuid::Uuid;

use super::unique;

const LEASE: Duration = Duration::from_secs(30);

/// A time with millisecond precision (what every store keeps exactly), well in the past so that
/// stores which look at their own clock are not confused.
fn base() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(1)).duration_trunc(TimeDelta::milliseconds(1)).expect("truncate")
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

struct Fixture {
    consumer: String,
    stream: StreamId,
}

impl Fixture {
    fn new() -> Self {
        Self { consumer: unique("saga.deadlines"), stream: StreamId::new(unique("deadline-steps")).expect("valid stream id") }
    }

    fn owner(&self, instance: &str) -> DeadlineOwner {
        DeadlineOwner::new(self.consumer.clone(), instance)
    }

    fn deadline(&self, instance: &str, name: &str, due_at: DateTime<Utc>) -> StoredDeadline {
        StoredDeadline { id: Uuid::new_v4(), owner: self.owner(instance), name: name.into(), due_at, payload: Bytes::from_static(b"\x01timeout") }
    }

    /// Appends one step record carrying `changes` (expected version: any).
    async fn step(&self, store: &dyn EventStore, changes: Vec<DeadlineChange>) -> Result<(), EventStoreError> {
        self.step_at(store, ExpectedVersion::Any, changes).await
    }

    async fn step_at(&self, store: &dyn EventStore, expected: ExpectedVersion, changes: Vec<DeadlineChange>) -> Result<(), EventStoreError> {
        let record = SerializedEvent::new("SagaStep.v1", Bytes::from_static(b"step"), None);
        store.append(AppendRequest::new(self.stream.clone(), expected, vec![record]).with_deadlines(changes)).await.map(|_| ())
    }

    async fn listed(&self, store: &dyn EventStore) -> Vec<Uuid> {
        store.deadlines(&self.consumer, None, 1000).await.expect("list deadlines").into_iter().map(|d| d.id).collect()
    }
}

/// Runs every case, each on a fresh store from `factory`.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    scheduled_with_an_append_and_claimed_once_due(factory().await).await;
    a_claim_holds_until_its_lease_ends(factory().await).await;
    firing_is_one_decision_with_the_append(factory().await).await;
    a_cancelled_deadline_never_fires(factory().await).await;
    scheduling_a_name_again_replaces_it(factory().await).await;
    a_failed_append_changes_no_deadline(factory().await).await;
    due_deadlines_come_earliest_first_per_consumer(factory().await).await;
    concurrent_claimers_never_get_the_same_deadline(factory().await).await;
    bad_deadline_changes_are_refused(factory().await).await;
    deadlines_due_together_come_in_scheduling_order(factory().await).await;
}

/// Deadlines due at the same instant are claimed and listed in the order they were scheduled (the
/// order `TestStore` fires them), whatever their ids.
pub async fn deadlines_due_together_come_in_scheduling_order(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let scheduled: Vec<StoredDeadline> = (0..8).map(|i| f.deadline(&format!("order-{i}"), "tick", t0)).collect();
    f.step(&*store, scheduled[..5].iter().cloned().map(DeadlineChange::Schedule).collect()).await.unwrap();
    f.step(&*store, scheduled[5..].iter().cloned().map(DeadlineChange::Schedule).collect()).await.unwrap();
    let expected: Vec<Uuid> = scheduled.iter().map(|d| d.id).collect();
    assert_eq!(f.listed(&*store).await, expected, "listed in scheduling order");
    let claimed: Vec<Uuid> = store.claim_due_deadlines(&f.consumer, t0, LEASE, 100).await.unwrap().into_iter().map(|c| c.deadline.id).collect();
    assert_eq!(claimed, expected, "claimed in scheduling order");
}

/// A deadline stored with an append is not claimable before it is due, then is, once; it is listed
/// until completed.
pub async fn scheduled_with_an_append_and_claimed_once_due(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let d = f.deadline("order-1", "payment", t0 + secs(10));
    f.step(&*store, vec![DeadlineChange::Schedule(d.clone())]).await.expect("append with a deadline");
    assert_eq!(store.deadlines(&f.consumer, Some("order-1"), 10).await.unwrap(), vec![d.clone()], "the deadline is stored as given");
    assert!(store.deadlines(&f.consumer, Some("order-2"), 10).await.unwrap().is_empty(), "the instance filter applies");

    let early = store.claim_due_deadlines(&f.consumer, t0 + secs(9), LEASE, 10).await.unwrap();
    assert!(early.is_empty(), "not due yet: {early:?}");
    let due = store.claim_due_deadlines(&f.consumer, t0 + secs(10), LEASE, 10).await.unwrap();
    assert_eq!(due.len(), 1, "due at exactly its time");
    assert_eq!(due[0].deadline, d);
    assert!(!due[0].fired, "not fired yet");
    assert_eq!(due[0].claims, 1);

    store.complete_deadline(d.id).await.expect("complete");
    assert!(f.listed(&*store).await.is_empty(), "completed deadlines are gone");
    assert!(store.claim_due_deadlines(&f.consumer, t0 + secs(1000), LEASE, 10).await.unwrap().is_empty());
    store.complete_deadline(d.id).await.expect("completing an unknown deadline is not an error");
}

/// A claimed deadline is not handed out again while the claim holds; after the lease it is (the
/// worker holding it may have died), with its claim count.
pub async fn a_claim_holds_until_its_lease_ends(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let d = f.deadline("order-1", "payment", t0);
    f.step(&*store, vec![DeadlineChange::Schedule(d.clone())]).await.unwrap();
    assert_eq!(store.claim_due_deadlines(&f.consumer, t0, LEASE, 10).await.unwrap().len(), 1);
    assert!(store.claim_due_deadlines(&f.consumer, t0 + secs(29), LEASE, 10).await.unwrap().is_empty(), "held by the first claim");
    let again = store.claim_due_deadlines(&f.consumer, t0 + secs(30), LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 1, "claimable again once the lease ended");
    assert_eq!(again[0].claims, 2);
}

/// An append carrying `Fire` marks the deadline fired: claimed again it says so (its step's effects
/// are to be run again), and a second `Fire` refuses its whole append.
pub async fn firing_is_one_decision_with_the_append(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let d = f.deadline("order-1", "payment", t0);
    f.step(&*store, vec![DeadlineChange::Schedule(d.clone())]).await.unwrap();
    store.claim_due_deadlines(&f.consumer, t0, LEASE, 10).await.unwrap();
    f.step(&*store, vec![DeadlineChange::Fire { id: d.id }]).await.expect("the firing step is stored");
    let version = store.stream_version(&f.stream).await.unwrap();

    match f.step(&*store, vec![DeadlineChange::Fire { id: d.id }]).await {
        Err(EventStoreError::DeadlineNotPending { id }) => assert_eq!(id, d.id),
        other => panic!("a second firing must be refused with DeadlineNotPending, got {other:?}"),
    }
    assert_eq!(store.stream_version(&f.stream).await.unwrap(), version, "the refused append stored nothing");

    let reclaimed = store.claim_due_deadlines(&f.consumer, t0 + secs(30), LEASE, 10).await.unwrap();
    assert_eq!(reclaimed.len(), 1, "fired but not completed: handed out again");
    assert!(reclaimed[0].fired, "and marked fired");

    // A fired deadline is a decision taken: cancelling its name does not undo it, and the name is
    // free to be scheduled again.
    f.step(&*store, vec![DeadlineChange::Cancel { owner: f.owner("order-1"), name: "payment".into() }]).await.unwrap();
    let next = f.deadline("order-1", "payment", t0 + secs(100));
    f.step(&*store, vec![DeadlineChange::Schedule(next.clone())]).await.unwrap();
    let mut listed = f.listed(&*store).await;
    listed.sort();
    let mut expected = vec![d.id, next.id];
    expected.sort();
    assert_eq!(listed, expected, "the fired deadline stays until completed, beside the new one");
    store.complete_deadline(d.id).await.unwrap();
    assert_eq!(f.listed(&*store).await, vec![next.id]);
}

/// A cancelled deadline is gone: never claimed, and firing it is refused.
pub async fn a_cancelled_deadline_never_fires(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let d = f.deadline("order-1", "payment", t0 + secs(5));
    let other = f.deadline("order-2", "payment", t0 + secs(5));
    f.step(&*store, vec![DeadlineChange::Schedule(d.clone()), DeadlineChange::Schedule(other.clone())]).await.unwrap();
    f.step(&*store, vec![DeadlineChange::Cancel { owner: f.owner("order-1"), name: "payment".into() }]).await.unwrap();
    assert_eq!(f.listed(&*store).await, vec![other.id], "only the cancelled instance's deadline is gone");
    let due = store.claim_due_deadlines(&f.consumer, t0 + secs(60), LEASE, 10).await.unwrap();
    assert_eq!(due.iter().map(|c| c.deadline.id).collect::<Vec<_>>(), vec![other.id]);
    assert!(
        matches!(f.step(&*store, vec![DeadlineChange::Fire { id: d.id }]).await, Err(EventStoreError::DeadlineNotPending { .. })),
        "firing a cancelled deadline is refused"
    );
    f.step(&*store, vec![DeadlineChange::Cancel { owner: f.owner("order-9"), name: "nothing".into() }]).await.expect("cancelling nothing is fine");
}

/// Scheduling a pending name again replaces it; the replaced one cannot fire; in one append the
/// changes apply in order.
pub async fn scheduling_a_name_again_replaces_it(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let first = f.deadline("order-1", "payment", t0 + secs(5));
    let second = f.deadline("order-1", "payment", t0 + secs(50));
    f.step(&*store, vec![DeadlineChange::Schedule(first.clone())]).await.unwrap();
    f.step(&*store, vec![DeadlineChange::Schedule(second.clone())]).await.unwrap();
    assert_eq!(f.listed(&*store).await, vec![second.id]);
    assert!(store.claim_due_deadlines(&f.consumer, t0 + secs(10), LEASE, 10).await.unwrap().is_empty(), "the replaced, earlier one is gone");
    assert!(matches!(f.step(&*store, vec![DeadlineChange::Fire { id: first.id }]).await, Err(EventStoreError::DeadlineNotPending { .. })));

    // Schedule then cancel in one append: nothing left. Cancel then schedule: scheduled.
    let third = f.deadline("order-2", "ship", t0);
    f.step(&*store, vec![DeadlineChange::Schedule(third.clone()), DeadlineChange::Cancel { owner: f.owner("order-2"), name: "ship".into() }]).await.unwrap();
    assert!(store.deadlines(&f.consumer, Some("order-2"), 10).await.unwrap().is_empty(), "schedule then cancel leaves nothing");
    f.step(&*store, vec![DeadlineChange::Cancel { owner: f.owner("order-2"), name: "ship".into() }, DeadlineChange::Schedule(third.clone())]).await.unwrap();
    assert_eq!(store.deadlines(&f.consumer, Some("order-2"), 10).await.unwrap(), vec![third]);
}

/// An append that fails (a concurrency conflict) stores none of its deadline changes.
pub async fn a_failed_append_changes_no_deadline(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let t0 = base();
    let kept = f.deadline("order-1", "payment", t0);
    f.step_at(&*store, ExpectedVersion::NoStream, vec![DeadlineChange::Schedule(kept.clone())]).await.unwrap();
    let lost = f.deadline("order-2", "payment", t0);
    let conflict = f
        .step_at(
            &*store,
            ExpectedVersion::Exact(Version(7)),
            vec![DeadlineChange::Schedule(lost), DeadlineChange::Cancel { owner: f.owner("order-1"), name: "payment".into() }],
        )
        .await;
    assert!(matches!(conflict, Err(EventStoreError::ConcurrencyConflict { .. })), "{conflict:?}");
    assert_eq!(f.listed(&*store).await, vec![kept.id], "neither the schedule nor the cancel of the failed append was applied");
}

/// Due deadlines come earliest due first, `limit` at a time, only the consumer's own.
pub async fn due_deadlines_come_earliest_first_per_consumer(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let g = Fixture::new();
    let t0 = base();
    let late = f.deadline("order-1", "a", t0 + secs(3));
    let early = f.deadline("order-2", "a", t0 + secs(1));
    let middle = f.deadline("order-3", "a", t0 + secs(2));
    let foreign = g.deadline("order-1", "a", t0);
    f.step(&*store, vec![DeadlineChange::Schedule(late.clone()), DeadlineChange::Schedule(early.clone()), DeadlineChange::Schedule(middle.clone())])
        .await
        .unwrap();
    g.step(&*store, vec![DeadlineChange::Schedule(foreign.clone())]).await.unwrap();
    let listed: Vec<Uuid> = store.deadlines(&f.consumer, None, 10).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(listed, vec![early.id, middle.id, late.id], "listed earliest due first");
    let first = store.claim_due_deadlines(&f.consumer, t0 + secs(10), LEASE, 2).await.unwrap();
    assert_eq!(first.iter().map(|c| c.deadline.id).collect::<Vec<_>>(), vec![early.id, middle.id], "earliest first, at most limit");
    let rest = store.claim_due_deadlines(&f.consumer, t0 + secs(10), LEASE, 2).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.deadline.id).collect::<Vec<_>>(), vec![late.id]);
    let theirs = store.claim_due_deadlines(&g.consumer, t0 + secs(10), LEASE, 10).await.unwrap();
    assert_eq!(theirs.iter().map(|c| c.deadline.id).collect::<Vec<_>>(), vec![foreign.id], "another consumer's are its own");
}

/// Claimers racing on the same due deadlines (threads here, processes in production) each get
/// different ones, and together all of them.
pub async fn concurrent_claimers_never_get_the_same_deadline(store: Arc<dyn EventStore>) {
    const N: usize = 120;
    let f = Arc::new(Fixture::new());
    let t0 = base();
    let mut all = HashSet::new();
    for chunk in 0..(N / 20) {
        let changes: Vec<DeadlineChange> = (0..20)
            .map(|i| {
                let d = f.deadline(&format!("order-{chunk}-{i}"), "payment", t0);
                all.insert(d.id);
                DeadlineChange::Schedule(d)
            })
            .collect();
        f.step(&*store, changes).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (store, f) = (Arc::clone(&store), Arc::clone(&f));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim_due_deadlines(&f.consumer, t0 + secs(1), LEASE, 7).await.expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.deadline.id));
            }
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("claimer"));
    }
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a deadline was handed to two claimers while the first claim held");
    assert_eq!(unique, all, "every due deadline was claimed");
}

/// Deadline changes without a consumer, instance or name are refused, and nothing is stored.
pub async fn bad_deadline_changes_are_refused(store: Arc<dyn EventStore>) {
    let f = Fixture::new();
    let mut d = f.deadline("order-1", "", base());
    let r = f.step(&*store, vec![DeadlineChange::Schedule(d.clone())]).await;
    assert!(matches!(r, Err(EventStoreError::InvalidRequest { .. })), "an empty name is refused: {r:?}");
    d.name = "payment".into();
    d.owner.instance = String::new();
    let r = f.step(&*store, vec![DeadlineChange::Schedule(d)]).await;
    assert!(matches!(r, Err(EventStoreError::InvalidRequest { .. })), "an empty instance is refused: {r:?}");
    assert_eq!(store.stream_version(&f.stream).await.unwrap(), Version(0), "nothing was stored");
    assert!(f.listed(&*store).await.is_empty());
}
