//! The event-store conformance suite. Every case panics with an explanation on failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use composable_rust_core::event_store::{MAX_EVENT_PAYLOAD_BYTES, PruneReport};
use composable_rust_core::{
    AppendRequest, EventMetadata, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, OutboxIntent, SerializedEvent, Snapshot, StreamId, Topic,
    Version,
};

use super::unique;

fn stream() -> StreamId {
    StreamId::new(unique("conformance")).expect("valid stream id")
}

fn event(n: u32) -> SerializedEvent {
    SerializedEvent::new("Counted.v1", Bytes::from(n.to_be_bytes().to_vec()), Some(EventMetadata::now().with_correlation_id("c-1").with_causation_id("cmd-1")))
}

async fn append(
    store: &dyn EventStore,
    s: &StreamId,
    expected: ExpectedVersion,
    events: Vec<SerializedEvent>,
) -> Result<composable_rust_core::AppendResult, EventStoreError> {
    store.append(AppendRequest::new(s.clone(), expected, events)).await
}

/// Runs every case, each on a fresh store from `factory`.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    appends_get_consecutive_versions_and_read_back(factory().await).await;
    no_stream_conflicts_on_existing_stream(factory().await).await;
    exact_version_is_checked(factory().await).await;
    any_version_always_appends(factory().await).await;
    read_stream_honours_from_and_limit(factory().await).await;
    read_all_is_in_commit_order(factory().await).await;
    identical_retry_is_idempotent(factory().await).await;
    reused_event_id_with_other_content_is_refused(factory().await).await;
    bad_appends_are_refused_and_store_nothing(factory().await).await;
    snapshots_keep_the_latest(factory().await).await;
    outbox_intents_are_stored_with_the_append(factory().await).await;
    inbox_marks_let_a_consumer_handle_an_event_once(factory().await).await;
    concurrent_writers_never_duplicate_a_version(factory().await).await;
    prune_deletes_only_what_was_published_or_marked_before_the_horizon(factory().await).await;
}

/// Versions start at 1 and are consecutive; events read back as written, with stream id, version and
/// metadata.
pub async fn appends_get_consecutive_versions_and_read_back(store: Arc<dyn EventStore>) {
    let s = stream();
    let written = vec![event(1), event(2), event(3)];
    let r = append(&*store, &s, ExpectedVersion::NoStream, written.clone()).await.expect("first append");
    assert_eq!((r.first_version, r.next_expected_version, r.duplicate), (Version(1), Version(3), false));
    let r2 = append(&*store, &s, ExpectedVersion::Exact(Version(3)), vec![event(4)]).await.expect("second append");
    assert_eq!(r2.first_version, Version(4));
    assert!(r2.first_position > r.first_position, "global positions must grow");
    let read = store.read_stream(&s, Version(1), 100).await.expect("read");
    assert_eq!(read.len(), 4);
    for (i, (got, want)) in read.iter().zip(written.iter()).enumerate() {
        assert_eq!(got.event_id, want.event_id, "event {i} id");
        assert_eq!(got.event_type, want.event_type);
        assert_eq!(got.data, want.data);
        assert_eq!(got.stream_id.as_ref(), Some(&s));
        assert_eq!(got.stream_version, Some(Version(i as u64 + 1)));
        assert_eq!(got.metadata.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(got.metadata.causation_id.as_deref(), Some("cmd-1"));
        assert_eq!(got.metadata.timestamp.timestamp_micros(), want.metadata.timestamp.timestamp_micros());
    }
    assert_eq!(store.stream_version(&s).await.expect("version"), Version(4));
    assert_eq!(store.stream_version(&stream()).await.expect("version"), Version(0), "unknown stream has version 0");
}

/// `NoStream` on an existing stream is a conflict carrying the actual version.
pub async fn no_stream_conflicts_on_existing_stream(store: Arc<dyn EventStore>) {
    let s = stream();
    append(&*store, &s, ExpectedVersion::NoStream, vec![event(1), event(2)]).await.expect("append");
    match append(&*store, &s, ExpectedVersion::NoStream, vec![event(3)]).await {
        Err(EventStoreError::ConcurrencyConflict { actual, expected, stream_id }) => {
            assert_eq!((actual, expected, stream_id), (Version(2), ExpectedVersion::NoStream, s.clone()));
        }
        other => panic!("expected ConcurrencyConflict, got {other:?}"),
    }
    assert_eq!(store.stream_version(&s).await.expect("version"), Version(2), "a refused append stores nothing");
}

/// A wrong exact version conflicts; the right one appends.
pub async fn exact_version_is_checked(store: Arc<dyn EventStore>) {
    let s = stream();
    append(&*store, &s, ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");
    let err = append(&*store, &s, ExpectedVersion::Exact(Version(5)), vec![event(2)]).await.expect_err("stale version must conflict");
    assert!(matches!(err, EventStoreError::ConcurrencyConflict { actual: Version(1), .. }), "{err:?}");
    assert!(!err.is_retryable(), "a conflict is not retryable as is");
    append(&*store, &s, ExpectedVersion::Exact(Version(1)), vec![event(2)]).await.expect("right version appends");
    let err = append(&*store, &stream(), ExpectedVersion::Exact(Version(1)), vec![event(1)]).await.expect_err("exact on a missing stream");
    assert!(matches!(err, EventStoreError::ConcurrencyConflict { actual: Version(0), .. }), "{err:?}");
}

/// `Any` appends whatever the version.
pub async fn any_version_always_appends(store: Arc<dyn EventStore>) {
    let s = stream();
    append(&*store, &s, ExpectedVersion::Any, vec![event(1)]).await.expect("any on new stream");
    let r = append(&*store, &s, ExpectedVersion::Any, vec![event(2), event(3)]).await.expect("any on existing");
    assert_eq!((r.first_version, r.next_expected_version), (Version(2), Version(3)));
}

/// `read_stream` starts at `from` and returns at most `limit` events.
pub async fn read_stream_honours_from_and_limit(store: Arc<dyn EventStore>) {
    let s = stream();
    append(&*store, &s, ExpectedVersion::NoStream, (1..=10).map(event).collect()).await.expect("append");
    let page = store.read_stream(&s, Version(4), 3).await.expect("read");
    let versions: Vec<u64> = page.iter().map(|e| e.stream_version.expect("version").0).collect();
    assert_eq!(versions, vec![4, 5, 6]);
    assert!(store.read_stream(&s, Version(11), 10).await.expect("read").is_empty());
    assert!(store.read_stream(&stream(), Version(1), 10).await.expect("read").is_empty());
}

/// `read_all` returns events of all streams in commit order with growing positions, paged.
pub async fn read_all_is_in_commit_order(store: Arc<dyn EventStore>) {
    let (a, b) = (stream(), stream());
    let first = append(&*store, &a, ExpectedVersion::NoStream, vec![event(1)]).await.expect("append").first_position;
    append(&*store, &b, ExpectedVersion::NoStream, vec![event(2)]).await.expect("append");
    append(&*store, &a, ExpectedVersion::Exact(Version(1)), vec![event(3), event(4)]).await.expect("append");
    let mut seen = Vec::new();
    let mut after = GlobalPosition(first.0 - 1);
    loop {
        let page = store.read_all(after, 2).await.expect("read_all");
        if page.is_empty() {
            break;
        }
        for r in &page {
            assert!(r.position > after, "positions must grow: {} after {after}", r.position);
            after = r.position;
            if r.event.stream_id.as_ref() == Some(&a) || r.event.stream_id.as_ref() == Some(&b) {
                seen.push(u32::from_be_bytes(r.event.data[..].try_into().expect("4 bytes")));
            }
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4], "events in commit order");
}

/// Appending the same events again is an idempotent success that stores nothing new.
pub async fn identical_retry_is_idempotent(store: Arc<dyn EventStore>) {
    let s = stream();
    let events = vec![event(1), event(2)];
    let first = append(&*store, &s, ExpectedVersion::NoStream, events.clone()).await.expect("append");
    let retry = append(&*store, &s, ExpectedVersion::NoStream, events).await.expect("identical retry must succeed");
    assert!(retry.duplicate, "retry must be reported as duplicate");
    assert_eq!((retry.first_version, retry.next_expected_version), (first.first_version, first.next_expected_version));
    assert_eq!(store.stream_version(&s).await.expect("version"), Version(2), "no duplicate stored");
}

/// An event id reused for other content is refused and changes nothing.
pub async fn reused_event_id_with_other_content_is_refused(store: Arc<dyn EventStore>) {
    let s = stream();
    let original = event(1);
    append(&*store, &s, ExpectedVersion::NoStream, vec![original.clone()]).await.expect("append");
    let impostor = SerializedEvent::new("Counted.v1", Bytes::from_static(b"other"), None).with_event_id(original.event_id);
    let err = append(&*store, &stream(), ExpectedVersion::Any, vec![impostor]).await.expect_err("reused id must be refused");
    assert!(matches!(err, EventStoreError::EventIdReused { event_id, .. } if event_id == original.event_id), "{err:?}");
    let read = store.read_stream(&s, Version(1), 10).await.expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].data, original.data, "stored event unchanged");
}

/// Empty appends, oversized payloads and outbox intents for unknown events are refused up front.
pub async fn bad_appends_are_refused_and_store_nothing(store: Arc<dyn EventStore>) {
    let s = stream();
    let err = append(&*store, &s, ExpectedVersion::Any, vec![]).await.expect_err("empty append");
    assert!(matches!(err, EventStoreError::InvalidRequest { .. }), "{err:?}");
    let big = SerializedEvent::new("Big.v1", Bytes::from(vec![0u8; MAX_EVENT_PAYLOAD_BYTES + 1]), None);
    let err = append(&*store, &s, ExpectedVersion::Any, vec![big]).await.expect_err("oversized payload");
    assert!(matches!(err, EventStoreError::PayloadTooLarge { .. }), "{err:?}");
    let mut request = AppendRequest::new(s.clone(), ExpectedVersion::Any, vec![event(1)]);
    request.outbox.push(OutboxIntent { topic: Topic::new("t").expect("topic"), event_id: uuid::Uuid::new_v4() });
    let err = store.append(request).await.expect_err("intent for unknown event");
    assert!(matches!(err, EventStoreError::InvalidRequest { .. }), "{err:?}");
    assert_eq!(store.stream_version(&s).await.expect("version"), Version(0), "nothing stored");
}

/// The latest snapshot wins; an older one does not replace a newer one.
pub async fn snapshots_keep_the_latest(store: Arc<dyn EventStore>) {
    let s = stream();
    assert!(store.load_snapshot(&s).await.expect("load").is_none());
    append(&*store, &s, ExpectedVersion::NoStream, (1..=5).map(event).collect()).await.expect("append");
    let snap = |v: u64, body: &'static [u8]| Snapshot { stream_id: s.clone(), version: Version(v), state: Bytes::from_static(body), taken_at: Utc::now() };
    store.save_snapshot(snap(3, b"three")).await.expect("save");
    store.save_snapshot(snap(5, b"five")).await.expect("save");
    store.save_snapshot(snap(4, b"four")).await.expect("save older");
    let loaded = store.load_snapshot(&s).await.expect("load").expect("snapshot");
    assert_eq!((loaded.version, &loaded.state[..]), (Version(5), &b"five"[..]));
}

/// Outbox intents are stored with the append, listed as pending until marked published.
pub async fn outbox_intents_are_stored_with_the_append(store: Arc<dyn EventStore>) {
    let s = stream();
    let topic = Topic::new(&unique("outbox")).expect("topic");
    let events = vec![event(1), event(2)];
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let mut request = AppendRequest::new(s.clone(), ExpectedVersion::NoStream, events);
    request.outbox = ids.iter().map(|id| OutboxIntent { topic: topic.clone(), event_id: *id }).collect();
    store.append(request).await.expect("append with outbox");
    let pending = |all: Vec<composable_rust_core::PendingPublication>| -> Vec<uuid::Uuid> {
        all.into_iter().filter(|p| p.topic == topic).map(|p| p.event.event_id).collect()
    };
    let before = pending(store.pending_publications(10_000).await.expect("pending"));
    assert_eq!(before, ids, "both intents pending, in order");
    let listed = store.pending_publications(10_000).await.expect("pending");
    let first = listed.iter().find(|p| p.event.event_id == ids[0]).expect("listed");
    assert_eq!(first.event.stream_version, Some(Version(1)), "pending publication carries the stored event");
    store.mark_published(ids[0], &topic).await.expect("mark");
    store.mark_published(ids[0], &topic).await.expect("marking twice is fine");
    store.mark_published(uuid::Uuid::new_v4(), &topic).await.expect("marking unknown is fine");
    assert_eq!(pending(store.pending_publications(10_000).await.expect("pending")), vec![ids[1]]);
}

/// Writers racing on one stream with `Exact` versions: every version exactly once, no gap; every
/// loser saw a `ConcurrencyConflict`.
pub async fn concurrent_writers_never_duplicate_a_version(store: Arc<dyn EventStore>) {
    const WRITERS: u32 = 8;
    const APPENDS: u32 = 25;
    let s = stream();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, s) = (Arc::clone(&store), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for i in 0..APPENDS {
                loop {
                    let v = store.stream_version(&s).await.expect("version");
                    match append(&*store, &s, ExpectedVersion::from_loaded(v), vec![event(w * 1000 + i)]).await {
                        Ok(_) => break,
                        Err(EventStoreError::ConcurrencyConflict { .. }) => {
                            conflicts += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => panic!("writer {w}: unexpected error {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let all = composable_rust_core::event_store::read_stream_to_end(&*store, &s, Version(1)).await.expect("read");
    assert_eq!(all.len(), (WRITERS * APPENDS) as usize);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.stream_version, Some(Version(i as u64 + 1)), "no gap, no duplicate");
    }
    let mut payloads: Vec<u32> = all.iter().map(|e| u32::from_be_bytes(e.data[..].try_into().expect("4 bytes"))).collect();
    payloads.sort_unstable();
    payloads.dedup();
    assert_eq!(payloads.len(), (WRITERS * APPENDS) as usize, "every append stored once");
}

/// An inbox mark is stored with the append; a second append with the same mark stores nothing and
/// says `AlreadyProcessed`; an identical retry is still an idempotent success; another consumer may
/// handle the same event.
pub async fn inbox_marks_let_a_consumer_handle_an_event_once(store: Arc<dyn EventStore>) {
    let consumer = unique("consumer");
    let handled = uuid::Uuid::new_v4();
    let (first, second) = (stream(), stream());
    let request = AppendRequest::new(first.clone(), ExpectedVersion::NoStream, vec![event(1)]).with_inbox(&consumer, handled);
    store.append(request.clone()).await.expect("first handling");
    let err = store
        .append(AppendRequest::new(second.clone(), ExpectedVersion::NoStream, vec![event(2)]).with_inbox(&consumer, handled))
        .await
        .expect_err("second handling");
    assert!(matches!(&err, EventStoreError::AlreadyProcessed { event_id, .. } if *event_id == handled), "{err:?}");
    assert_eq!(store.stream_version(&second).await.expect("version"), Version(0), "a refused handling stores nothing");
    let retry = store.append(request).await.expect("an identical retry of the first handling");
    assert!(retry.duplicate);
    store
        .append(AppendRequest::new(second, ExpectedVersion::NoStream, vec![event(3)]).with_inbox(unique("other-consumer"), handled))
        .await
        .expect("another consumer");
}

/// How far apart in time [`prune_deletes_only_what_was_published_or_marked_before_the_horizon`]
/// keeps what it prunes and what it keeps: more than the store's timestamp resolution (SQLite records
/// milliseconds) and than the skew between this machine's clock and the store's (PostgreSQL records
/// the server's `now()`).
const PRUNE_MARGIN: Duration = Duration::from_millis(100);

/// `prune(horizon)` deletes the outbox entries marked published before the horizon and the inbox
/// marks recorded before it, and reports how many; it keeps pending outbox entries however old,
/// entries published and marks recorded after the horizon, and every event. Once a consumer's mark is
/// pruned, the inbox no longer refuses a redelivery of that event (the documented price of
/// retention); a mark still kept does.
///
/// The case prunes the whole store up to a moment it has just passed, so on a shared database it also
/// deletes other published outbox entries and inbox marks older than that, which retention allows;
/// its exact counts assume nobody else publishes or marks in the store while it runs.
pub async fn prune_deletes_only_what_was_published_or_marked_before_the_horizon(store: Arc<dyn EventStore>) {
    // What earlier cases (or earlier runs on a shared database) published or marked goes first, so
    // that the counts below are this case's own.
    tokio::time::sleep(PRUNE_MARGIN).await;
    store.prune(Utc::now()).await.expect("prune what came before");
    assert_eq!(store.prune(Utc::now()).await.expect("prune again"), PruneReport::default(), "nothing left to prune");

    let s = stream();
    let topic = Topic::new(&unique("prune")).expect("topic");
    let consumer = unique("consumer");
    let (handled_early, handled_late) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let early = vec![event(1), event(2)];
    let (published_early, pending_early) = (early[0].event_id, early[1].event_id);
    let mut request = AppendRequest::new(s.clone(), ExpectedVersion::NoStream, early).with_inbox(&consumer, handled_early);
    request.outbox = vec![OutboxIntent { topic: topic.clone(), event_id: published_early }, OutboxIntent { topic: topic.clone(), event_id: pending_early }];
    store.append(request).await.expect("early append");
    store.mark_published(published_early, &topic).await.expect("mark");

    tokio::time::sleep(PRUNE_MARGIN).await;
    let horizon = Utc::now();
    tokio::time::sleep(PRUNE_MARGIN).await;

    let late = event(3);
    let published_late = late.event_id;
    let mut request = AppendRequest::new(s.clone(), ExpectedVersion::Exact(Version(2)), vec![late]).with_inbox(&consumer, handled_late);
    request.outbox = vec![OutboxIntent { topic: topic.clone(), event_id: published_late }];
    store.append(request).await.expect("late append");
    store.mark_published(published_late, &topic).await.expect("mark");

    let report = store.prune(horizon).await.expect("prune");
    assert_eq!(
        (report.outbox_rows, report.inbox_marks),
        (1, 1),
        "the entry published and the mark recorded before the horizon go; those after it, and the pending entry, stay"
    );
    assert_eq!(store.prune(horizon).await.expect("prune again"), PruneReport::default(), "pruning to the same horizon again finds nothing");

    let pending: Vec<uuid::Uuid> =
        store.pending_publications(10_000).await.expect("pending").into_iter().filter(|p| p.topic == topic).map(|p| p.event.event_id).collect();
    assert_eq!(pending, vec![pending_early], "a pending entry survives pruning, however old");
    let events = store.read_stream(&s, Version(1), 10).await.expect("read");
    assert_eq!(events.len(), 3, "pruning never deletes events");

    let err = store
        .append(AppendRequest::new(stream(), ExpectedVersion::NoStream, vec![event(4)]).with_inbox(&consumer, handled_late))
        .await
        .expect_err("a kept mark still refuses the redelivery");
    assert!(matches!(&err, EventStoreError::AlreadyProcessed { event_id, .. } if *event_id == handled_late), "{err:?}");
    store
        .append(AppendRequest::new(stream(), ExpectedVersion::NoStream, vec![event(5)]).with_inbox(&consumer, handled_early))
        .await
        .expect("once its mark is pruned, a redelivery of an event handled before the horizon is no longer recognised");

    tokio::time::sleep(PRUNE_MARGIN).await;
    let report = store.prune(Utc::now()).await.expect("prune to now");
    assert_eq!((report.outbox_rows, report.inbox_marks), (1, 2), "what was recent goes once the horizon passes it");
    let pending: Vec<uuid::Uuid> =
        store.pending_publications(10_000).await.expect("pending").into_iter().filter(|p| p.topic == topic).map(|p| p.event.event_id).collect();
    assert_eq!(pending, vec![pending_early], "the pending entry is still there");
    store.mark_published(pending_early, &topic).await.expect("marking a long-pending entry");
    assert!(store.pending_publications(10_000).await.expect("pending").iter().all(|p| p.topic != topic));
}
