//! The read-side conformance suite: filtered reads and store-fed subscriptions over the global log,
//! and the [`ReadModelStore`] guarantees projections rely on (checkpoint and documents committed
//! together, compare-and-set, atomic swap, leases). Every case panics with an explanation on failure.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use composable_rust_core::{
    AppendRequest, DocChange, EventFilter, EventMetadata, EventStore, ExpectedVersion, GlobalPosition, ReadModelError, ReadModelStore, RecordedEvent,
    SerializedEvent, StreamId,
};
use composable_rust_runtime::{Projection, ProjectionError, ProjectionRunner, StoreSubscription, View};

use super::unique;

/// A store seen both ways: its log and its read models (every store is both).
pub type Stores = (Arc<dyn EventStore>, Arc<dyn ReadModelStore>);

/// Runs every case, each on a fresh store from `factory`.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Stores>,
{
    commit_is_a_compare_and_set_of_documents_and_checkpoint(factory().await).await;
    documents_read_back_in_key_order(factory().await).await;
    swap_replaces_the_live_copy_atomically(factory().await).await;
    one_worker_holds_a_lease(factory().await).await;
    bad_commits_are_refused(factory().await).await;
    filtered_reads_skip_what_does_not_match_and_say_how_far_they_looked(factory().await).await;
    a_subscription_catches_up_then_tails_concurrent_writers_without_loss_or_duplicate(factory().await).await;
    two_runners_of_one_projection_apply_each_event_once(factory().await).await;
    a_subscription_reports_its_lag_in_events_and_in_time(factory().await).await;
}

fn put(key: &str, value: &str) -> DocChange {
    DocChange::Put { key: key.into(), value: Bytes::from(value.as_bytes().to_vec()) }
}

async fn append(store: &dyn EventStore, stream: &str, event_type: &str, n: usize) -> GlobalPosition {
    let events = (0..n).map(|i| SerializedEvent::new(event_type, format!("{i}").into_bytes(), None)).collect();
    let r = store.append(AppendRequest::new(StreamId::new(stream).unwrap(), ExpectedVersion::Any, events)).await.expect("append");
    GlobalPosition(r.first_position.0 + n as u64 - 1)
}

/// A commit writes its documents and moves the checkpoint together, only from the checkpoint the
/// caller read; a stale commit writes nothing.
pub async fn commit_is_a_compare_and_set_of_documents_and_checkpoint((_, models): Stores) {
    let p = unique("proj");
    assert_eq!(models.checkpoint(&p).await.unwrap().position, GlobalPosition(0), "a new projection is at 0");
    assert!(models.checkpoint(&p).await.unwrap().updated_at.is_none());
    models.commit(&p, GlobalPosition(0), GlobalPosition(5), vec![put("a", "1"), put("b", "2")]).await.expect("first commit");
    let stale = models.commit(&p, GlobalPosition(0), GlobalPosition(6), vec![put("a", "stale")]).await;
    match stale {
        Err(ReadModelError::CheckpointMoved { expected, actual, .. }) => assert_eq!((expected, actual), (GlobalPosition(0), GlobalPosition(5))),
        other => panic!("a stale commit must be refused with CheckpointMoved, got {other:?}"),
    }
    assert_eq!(models.get(&p, "a").await.unwrap().as_deref(), Some(&b"1"[..]), "the refused commit wrote nothing");
    let cp = models.checkpoint(&p).await.unwrap();
    assert_eq!(cp.position, GlobalPosition(5));
    assert!(cp.updated_at.is_some());
    models.commit(&p, GlobalPosition(5), GlobalPosition(9), vec![DocChange::Delete { key: "a".into() }, put("b", "3"), put("b", "4")]).await.unwrap();
    assert_eq!(models.get(&p, "a").await.unwrap(), None, "deleted");
    assert_eq!(models.get(&p, "b").await.unwrap().as_deref(), Some(&b"4"[..]), "changes apply in order");
    models.commit(&p, GlobalPosition(9), GlobalPosition(9), vec![]).await.expect("an empty commit that does not move is fine");
    let other = unique("proj");
    assert_eq!(models.get(&other, "b").await.unwrap(), None, "projections are separate");
}

/// `list` returns a prefix's documents in key order, at most `limit`.
pub async fn documents_read_back_in_key_order((_, models): Stores) {
    let p = unique("proj");
    models.commit(&p, GlobalPosition(0), GlobalPosition(1), vec![put("sku/b", "2"), put("sku/a", "1"), put("order/x", "9"), put("sku/c", "3")]).await.unwrap();
    let keys: Vec<String> = models.list(&p, "sku/", 10).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["sku/a", "sku/b", "sku/c"]);
    assert_eq!(models.list(&p, "sku/", 2).await.unwrap().len(), 2);
    assert_eq!(models.list(&p, "", 10).await.unwrap().len(), 4);
    assert!(models.list(&unique("proj"), "", 10).await.unwrap().is_empty());
}

/// A swap puts the shadow's documents and checkpoint in place of the live ones in one step, and
/// empties the shadow; `reset` empties a projection.
pub async fn swap_replaces_the_live_copy_atomically((_, models): Stores) {
    let live = unique("proj");
    let shadow = format!("{live}~rebuild");
    models.commit(&live, GlobalPosition(0), GlobalPosition(50), vec![put("old", "1"), put("both", "live")]).await.unwrap();
    models.commit(&shadow, GlobalPosition(0), GlobalPosition(40), vec![put("both", "shadow"), put("new", "1")]).await.unwrap();
    models.swap(&live, &shadow).await.expect("swap");
    assert_eq!(models.checkpoint(&live).await.unwrap().position, GlobalPosition(40), "the shadow's checkpoint is live");
    assert_eq!(models.get(&live, "old").await.unwrap(), None, "the old live documents are gone");
    assert_eq!(models.get(&live, "both").await.unwrap().as_deref(), Some(&b"shadow"[..]));
    assert_eq!(models.get(&live, "new").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(models.checkpoint(&shadow).await.unwrap().position, GlobalPosition(0), "the shadow is empty again");
    assert!(models.list(&shadow, "", 10).await.unwrap().is_empty());
    // The live runner's next commit from its old checkpoint is refused: it continues from 40.
    assert!(matches!(models.commit(&live, GlobalPosition(50), GlobalPosition(60), vec![]).await, Err(ReadModelError::CheckpointMoved { .. })));
    models.reset(&live).await.unwrap();
    assert_eq!(models.checkpoint(&live).await.unwrap().position, GlobalPosition(0));
    assert!(models.list(&live, "", 10).await.unwrap().is_empty());
    assert!(models.swap(&live, &live).await.is_err(), "a projection cannot swap with itself");
}

/// One worker holds a projection's lease until it lapses; the holder renews it.
pub async fn one_worker_holds_a_lease((_, models): Stores) {
    let p = unique("proj");
    let now = Utc::now();
    let lease = Duration::from_secs(10);
    assert!(models.try_lease(&p, "a", now, lease).await.unwrap());
    assert!(!models.try_lease(&p, "b", now + chrono::Duration::seconds(9), lease).await.unwrap(), "held by a");
    assert!(models.try_lease(&p, "a", now + chrono::Duration::seconds(9), lease).await.unwrap(), "a renews");
    assert!(!models.try_lease(&p, "b", now + chrono::Duration::seconds(18), lease).await.unwrap(), "renewed until 19 s");
    assert!(models.try_lease(&p, "b", now + chrono::Duration::seconds(19), lease).await.unwrap(), "lapsed: b takes over");
    assert!(!models.try_lease(&p, "a", now + chrono::Duration::seconds(20), lease).await.unwrap());
}

/// Empty names and keys, and a checkpoint moving back, are refused.
pub async fn bad_commits_are_refused((_, models): Stores) {
    let p = unique("proj");
    assert!(matches!(models.commit("", GlobalPosition(0), GlobalPosition(1), vec![]).await, Err(ReadModelError::InvalidRequest { .. })));
    assert!(matches!(models.commit(&p, GlobalPosition(0), GlobalPosition(1), vec![put("", "x")]).await, Err(ReadModelError::InvalidRequest { .. })));
    models.commit(&p, GlobalPosition(0), GlobalPosition(5), vec![]).await.unwrap();
    assert!(matches!(models.commit(&p, GlobalPosition(5), GlobalPosition(4), vec![]).await, Err(ReadModelError::InvalidRequest { .. })));
    assert_eq!(models.checkpoint(&p).await.unwrap().position, GlobalPosition(5));
}

/// A filtered read returns the matching events only, in order, and how far it looked, so a reader
/// never reads the same non-matching events twice; `head` is the last position.
pub async fn filtered_reads_skip_what_does_not_match_and_say_how_far_they_looked((events, _): Stores) {
    let cat = unique("cat").replace('-', "");
    let other = unique("oth").replace('-', "");
    let start = events.head().await.unwrap();
    append(&*events, &format!("{cat}-1"), "Wanted.v1", 3).await;
    append(&*events, &format!("{other}-1"), "Wanted.v1", 5).await;
    append(&*events, &format!("{cat}-2"), "Other.v1", 2).await;
    let last = append(&*events, &format!("{cat}-3"), "Wanted.v1", 1).await;
    assert_eq!(events.head().await.unwrap(), last, "head is the last position");

    let filter = EventFilter::all().category(cat.clone()).event_type("Wanted.v1");
    let page = events.read_all_filtered(start, 100, &filter).await.unwrap();
    assert_eq!(page.events.len(), 4, "3 + 1 matching: {:?}", page.events.iter().map(|e| &e.event.stream_id).collect::<Vec<_>>());
    assert!(page.events.windows(2).all(|w| w[0].position < w[1].position), "commit order");
    assert_eq!(page.scanned_to, last, "looked at everything");
    let small = events.read_all_filtered(start, 4, &filter).await.unwrap();
    assert!(small.scanned_to < last, "a limit bounds how far it looks");
    assert!(small.events.iter().all(|e| e.position <= small.scanned_to));
    let rest = events.read_all_filtered(small.scanned_to, 100, &filter).await.unwrap();
    assert_eq!(small.events.len() + rest.events.len(), 4, "reading on from scanned_to misses and repeats nothing");
    let by_category = events.read_all_filtered(start, 100, &EventFilter::all().category(other.clone())).await.unwrap();
    assert_eq!(by_category.events.len(), 5);
    let none = events.read_all_filtered(last, 100, &filter).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.scanned_to, last, "nothing new: the position stays");
}

/// Writers append while a subscription catches up and then tails: it sees every matching event
/// exactly once, in commit order, including those committed while it was catching up.
pub async fn a_subscription_catches_up_then_tails_concurrent_writers_without_loss_or_duplicate((events, _): Stores) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let cat = unique("sub").replace('-', "");
    let start = events.head().await.unwrap();
    // Some history before the subscription starts.
    for i in 0..20 {
        append(&*events, &format!("{cat}-pre{i}"), "E.v1", 1).await;
    }
    let mut sub = StoreSubscription::new(Arc::clone(&events), EventFilter::all().category(cat.clone())).after(start).batch(7);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (events, cat) = (Arc::clone(&events), cat.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                append(&*events, &format!("{cat}-w{w}"), "E.v1", 1).await;
                append(&*events, &format!("noise{w}-{i}"), "E.v1", 1).await;
            }
        }));
    }
    let expected = 20 + WRITERS * PER_WRITER;
    let mut seen: Vec<RecordedEvent> = Vec::new();
    let reading = async {
        while seen.len() < expected {
            seen.extend(sub.next_batch().await.expect("read"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reading).await.expect("the subscription saw every event within 60 s");
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen.len(), expected, "nothing duplicated");
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position), "in commit order, no repeats");
    let ids: BTreeSet<_> = seen.iter().map(|e| e.event.event_id).collect();
    assert_eq!(ids.len(), expected);
    assert!(sub.try_next_batch().await.unwrap().is_empty(), "caught up");
    let status = sub.status().await.unwrap();
    assert!(status.position <= status.head);
}

/// Counts the events of one category in the document `count`.
struct Counter(String);

#[async_trait]
impl Projection for Counter {
    const NAME: &'static str = "conformance-counter";

    fn filter(&self) -> EventFilter {
        EventFilter::all().category(self.0.clone())
    }

    async fn apply(&self, _event: &RecordedEvent, view: &mut View<'_>) -> Result<(), ProjectionError> {
        view.update::<u64>("count", |n| *n += 1).await
    }
}

/// Two runners of one projection racing batch for batch (no lease): the read model counts every
/// event once, because a batch commits only from the checkpoint it read.
pub async fn two_runners_of_one_projection_apply_each_event_once((events, models): Stores) {
    let cat = unique("cnt").replace('-', "");
    for i in 0..30 {
        append(&*events, &format!("{cat}-{i}"), "E.v1", 3).await;
    }
    // The counter's documents are shared by every run of the suite on this store: start clean.
    models.reset(Counter::NAME).await.unwrap();
    let a = Arc::new(ProjectionRunner::new(Counter(cat.clone()), Arc::clone(&events), Arc::clone(&models)).with_batch(4));
    let b = Arc::new(ProjectionRunner::new(Counter(cat.clone()), Arc::clone(&events), Arc::clone(&models)).with_batch(5));
    let run = |r: Arc<ProjectionRunner<Counter>>| tokio::spawn(async move { r.catch_up().await.expect("catch up") });
    let (x, y) = (run(Arc::clone(&a)), run(Arc::clone(&b)));
    x.await.unwrap();
    y.await.unwrap();
    a.catch_up().await.unwrap();
    let count: Option<u64> = a.reader().get("count").await.unwrap();
    assert_eq!(count, Some(90), "every event counted exactly once");
}

/// A subscription behind the head reports how many events and how much time it lags: how long the
/// first event it has not handled has waited (from that event's own timestamp).
pub async fn a_subscription_reports_its_lag_in_events_and_in_time((events, _): Stores) {
    let stream = StreamId::new(unique("lag")).unwrap();
    let written_at = Utc::now() - chrono::Duration::seconds(7);
    let old = SerializedEvent::new("Lag.v1", b"old".to_vec(), Some(EventMetadata { timestamp: written_at, ..EventMetadata::now() }));
    let first = events.append(AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![old])).await.expect("append").first_position;
    append(&*events, stream.as_str(), "Lag.v1", 1).await;
    let behind = StoreSubscription::new(Arc::clone(&events), EventFilter::all()).after(GlobalPosition(first.0 - 1));
    let status = behind.status().await.unwrap();
    assert!(status.lag_events >= 2, "two events (at least) after the position: {status:?}");
    assert!(status.lag >= Duration::from_secs(6), "the first event after the position was written 7 s ago: {status:?}");
    let mut tail = StoreSubscription::new(Arc::clone(&events), EventFilter::all()).after(status.head);
    while !tail.try_next_batch().await.unwrap().is_empty() {}
    let caught_up = tail.status().await.unwrap();
    if caught_up.head == tail.position() {
        assert_eq!((caught_up.lag_events, caught_up.lag), (0, Duration::ZERO), "caught up: no lag");
    }
}
