//! Group commit: concurrent writes share one transaction, each append keeping its own checks and
//! result (see `sqlite/src/group_commit.rs`).
//!
//! To make a group form for sure, a test holds the file's write lock from a connection of its own
//! (as another process would), queues the writes (each append future polled once, which hands it to
//! the writer task), then lets go: the writer, stuck on `BEGIN IMMEDIATE` with the first write(s),
//! finds every other write queued.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    AppendRequest, AppendResult, DeadlineChange, DeadlineOwner, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, OutboxIntent, SerializedEvent,
    StoredDeadline, StreamId, Topic, Version,
};
use composable_rust_sqlite::{SqliteConfig, SqliteEventStore};
use composable_rust_testing::conformance::{deadlines, event_store};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};
use uuid::Uuid;

/// A fresh database file, removed with its WAL files when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("cr-sqlite-group-{}.db", Uuid::new_v4().simple())))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn s(name: &str) -> StreamId {
    StreamId::new(name).expect("stream id")
}

fn event(n: u32) -> SerializedEvent {
    SerializedEvent::new("Counted.v1", Bytes::from(n.to_be_bytes().to_vec()), None)
}

fn number(e: &SerializedEvent) -> u32 {
    u32::from_be_bytes(e.data[..].try_into().expect("4 bytes"))
}

/// The file's write lock, held by a connection of its own until [`release`].
async fn hold_write_lock(path: &Path) -> SqliteConnection {
    let mut conn = SqliteConnectOptions::new().filename(path).connect().await.expect("blocker connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.expect("take the write lock");
    conn
}

async fn release(mut conn: SqliteConnection) {
    sqlx::query("COMMIT").execute(&mut conn).await.expect("release the write lock");
}

type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, EventStoreError>> + Send + 'a>>;

/// Hands every request to the store (each future polled once, so its append is queued) and returns
/// the futures, to be awaited once the lock is released.
async fn queue<'a>(store: &'a SqliteEventStore, requests: &[AppendRequest]) -> Vec<Pending<'a, AppendResult>> {
    let mut pending: Vec<Pending<'a, AppendResult>> = Vec::new();
    for request in requests {
        let mut f: Pending<'a, AppendResult> = Box::pin(store.append(request.clone()));
        assert!(futures::poll!(f.as_mut()).is_pending(), "an append cannot finish while another connection holds the write lock");
        pending.push(f);
    }
    pending
}

async fn versions(store: &SqliteEventStore, name: &str) -> Vec<u32> {
    read_stream_to_end(store, &s(name), Version(1)).await.expect("read").iter().map(number).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario: every kind of outcome in one group
async fn writes_queued_together_share_a_transaction_and_keep_their_own_results() {
    let db = TempDb::new();
    let store = SqliteEventStore::open(&db.0).await.expect("open");
    let consumer = "saga.group-test";
    let topic = Topic::new("group.events").expect("topic");

    // What the group's appends will meet.
    let taken = event(1);
    let taken_append = AppendRequest::new(s("taken"), ExpectedVersion::NoStream, vec![taken.clone()]);
    let taken_result = store.append(taken_append.clone()).await.expect("taken");
    let handled = Uuid::new_v4();
    store.append(AppendRequest::new(s("handled"), ExpectedVersion::NoStream, vec![event(2)]).with_inbox(consumer, handled)).await.expect("handled");
    store.append(AppendRequest::new(s("at-two"), ExpectedVersion::NoStream, vec![event(3), event(4)])).await.expect("at-two");
    let published = event(5);
    let mut request = AppendRequest::new(s("published"), ExpectedVersion::NoStream, vec![published.clone()]);
    request.outbox = vec![OutboxIntent { topic: topic.clone(), event_id: published.event_id }];
    store.append(request).await.expect("published");
    let owner = DeadlineOwner::new(consumer, "instance-1");
    let deadline = |name: &str| StoredDeadline {
        id: Uuid::new_v4(),
        owner: owner.clone(),
        name: name.into(),
        due_at: chrono::Utc::now() + chrono::Duration::hours(1),
        payload: Bytes::from_static(b"timeout"),
    };
    let (refused_deadline, kept_deadline) = (deadline("refused"), deadline("kept"));

    let mut requests = Vec::new();
    // 0..32: fresh streams, every other one with an outbox intent.
    let mut intents = Vec::new();
    for i in 0..32 {
        let e = event(100 + i);
        let mut r = AppendRequest::new(s(&format!("fresh-{i}")), ExpectedVersion::NoStream, vec![e.clone()]);
        if i % 2 == 0 {
            r.outbox = vec![OutboxIntent { topic: topic.clone(), event_id: e.event_id }];
            intents.push(e.event_id);
        }
        requests.push(r);
    }
    // 32..38: six contenders for one new stream.
    for i in 0..6 {
        requests.push(AppendRequest::new(s("shared"), ExpectedVersion::NoStream, vec![event(200 + i)]));
    }
    // 38, 39: a stale version, then the right one, on one stream.
    requests.push(AppendRequest::new(s("at-two"), ExpectedVersion::Exact(Version(1)), vec![event(300)]));
    requests.push(AppendRequest::new(s("at-two"), ExpectedVersion::Exact(Version(2)), vec![event(301)]));
    // 40: a stored id with other content; 41: an identical retry.
    let impostor = SerializedEvent::new("Counted.v1", Bytes::from_static(b"other"), None).with_event_id(taken.event_id);
    requests.push(AppendRequest::new(s("impostor"), ExpectedVersion::Any, vec![impostor]));
    requests.push(taken_append.clone());
    // 42: an event the consumer handled already; 43: one it did not.
    requests.push(AppendRequest::new(s("again"), ExpectedVersion::NoStream, vec![event(400)]).with_inbox(consumer, handled));
    let fresh_mark = Uuid::new_v4();
    requests.push(AppendRequest::new(s("fresh-mark"), ExpectedVersion::NoStream, vec![event(401)]).with_inbox(consumer, fresh_mark));
    // 44: a schedule, then the firing of a deadline that is not pending: refused whole; 45: a schedule.
    requests.push(
        AppendRequest::new(s("refused-fire"), ExpectedVersion::NoStream, vec![event(500)])
            .with_deadlines([DeadlineChange::Schedule(refused_deadline.clone()), DeadlineChange::Fire { id: Uuid::new_v4() }]),
    );
    requests.push(
        AppendRequest::new(s("kept-deadline"), ExpectedVersion::NoStream, vec![event(501)]).with_deadlines([DeadlineChange::Schedule(kept_deadline.clone())]),
    );

    let blocker = hold_write_lock(&db.0).await;
    let before = store.group_commit_stats();
    let pending = queue(&store, &requests).await;
    let mut mark: Pending<'_, ()> = Box::pin(store.mark_published(published.event_id, &topic));
    assert!(futures::poll!(mark.as_mut()).is_pending());
    release(blocker).await;
    let (results, marked) = tokio::join!(futures::future::join_all(pending), mark);
    marked.expect("mark_published in the group");
    let stats = store.group_commit_stats();

    let mut positions = Vec::new();
    for (i, result) in results[..32].iter().enumerate() {
        let r = result.as_ref().unwrap_or_else(|e| panic!("fresh append {i}: {e}"));
        assert_eq!((r.first_version, r.next_expected_version, r.duplicate), (Version(1), Version(1), false), "fresh append {i}");
        let at = store.read_all(GlobalPosition(r.first_position.0 - 1), 1).await.expect("read_all");
        assert_eq!(at[0].event.event_id, requests[i].events[0].event_id, "fresh append {i}: its first_position holds its event");
        positions.push(r.first_position);
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 32, "every append has positions of its own");

    let winners: Vec<usize> = (32..38).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "one contender for a new stream wins: {:?}", &results[32..38]);
    for i in (32..38).filter(|i| !winners.contains(i)) {
        assert!(
            matches!(&results[i], Err(EventStoreError::ConcurrencyConflict { actual: Version(1), expected: ExpectedVersion::NoStream, .. })),
            "contender {i}: {:?}",
            results[i]
        );
    }
    assert_eq!(versions(&store, "shared").await, [number(&requests[winners[0]].events[0])], "only the winner's event is stored");

    assert!(matches!(&results[38], Err(EventStoreError::ConcurrencyConflict { actual: Version(2), .. })), "{:?}", results[38]);
    assert_eq!(results[39].as_ref().expect("the right version appends").first_version, Version(3));
    assert_eq!(versions(&store, "at-two").await, [3, 4, 301]);

    assert!(matches!(&results[40], Err(EventStoreError::EventIdReused { event_id, .. }) if *event_id == taken.event_id), "{:?}", results[40]);
    assert_eq!(store.stream_version(&s("impostor")).await.expect("version"), Version(0));
    let retry = results[41].as_ref().expect("an identical retry succeeds");
    assert!(retry.duplicate && retry.first_position == taken_result.first_position, "{retry:?}");
    assert_eq!(versions(&store, "taken").await, [1], "the retry stored nothing");

    assert!(matches!(&results[42], Err(EventStoreError::AlreadyProcessed { event_id, .. }) if *event_id == handled), "{:?}", results[42]);
    assert_eq!(store.stream_version(&s("again")).await.expect("version"), Version(0));
    results[43].as_ref().expect("a fresh inbox mark");
    let again = store.append(AppendRequest::new(s("fresh-mark-2"), ExpectedVersion::NoStream, vec![event(402)]).with_inbox(consumer, fresh_mark)).await;
    assert!(matches!(again, Err(EventStoreError::AlreadyProcessed { .. })), "the group stored the mark: {again:?}");

    assert!(matches!(&results[44], Err(EventStoreError::DeadlineNotPending { .. })), "{:?}", results[44]);
    assert_eq!(store.stream_version(&s("refused-fire")).await.expect("version"), Version(0));
    let stored: Vec<Uuid> = store.deadlines(consumer, None, 100).await.expect("deadlines").into_iter().map(|d| d.id).collect();
    assert_eq!(stored, [kept_deadline.id], "the refused append's schedule was rolled back, the other one kept");
    results[45].as_ref().expect("a schedule");

    let pending: Vec<Uuid> =
        store.pending_publications(1000).await.expect("pending").into_iter().filter(|p| p.topic == topic).map(|p| p.event.event_id).collect();
    assert_eq!(pending, intents, "the group's intents are pending in order; the marked one is not");

    let transactions = stats.transactions - before.transactions;
    assert_eq!(stats.appends - before.appends, requests.len() as u64, "{stats:?}");
    assert_eq!(stats.marks - before.marks, 1, "{stats:?}");
    // One contender for "shared" per transaction: at most two transactions for everything queued,
    // plus one for each contender after the first.
    assert!(transactions <= 7, "{} writes took {transactions} transactions: {stats:?}", requests.len() + 1);
    assert!(stats.largest_group >= 20, "{stats:?}");
    // The impostor passes the checks made before writing (its stream is new, `Any` accepts it); its
    // stored id makes the group's insert fail, so its group is written again one append at a time.
    assert_eq!((stats.rewritten_groups - before.rewritten_groups, stats.failed_groups), (1, 0), "{stats:?}");

    // The log: every event once, in position order, none skipped.
    let all = store.read_all(GlobalPosition(0), 10_000).await.expect("read_all");
    assert_eq!(all.len() as u64, store.event_count().await.expect("count"));
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_be_written_together_is_written_one_append_at_a_time() {
    let db = TempDb::new();
    let store = SqliteEventStore::open(&db.0).await.expect("open");
    store.append(AppendRequest::new(s("existing"), ExpectedVersion::NoStream, vec![event(1)])).await.expect("existing");
    let twice = event(2);
    let mut requests: Vec<AppendRequest> = (0..10).map(|i| AppendRequest::new(s(&format!("ok-{i}")), ExpectedVersion::NoStream, vec![event(10 + i)])).collect();
    // Two events with one id: no check before the insert sees it, the insert refuses it.
    requests.push(AppendRequest::new(s("one-id-twice"), ExpectedVersion::NoStream, vec![twice.clone(), twice]));
    requests.push(AppendRequest::new(s("existing"), ExpectedVersion::NoStream, vec![event(3)]));

    let blocker = hold_write_lock(&db.0).await;
    let before = store.group_commit_stats();
    let pending = queue(&store, &requests).await;
    release(blocker).await;
    let results = futures::future::join_all(pending).await;
    let stats = store.group_commit_stats();

    for (i, result) in (0_u32..).zip(&results[..10]) {
        assert_eq!(result.as_ref().unwrap_or_else(|e| panic!("append {i}: {e}")).first_version, Version(1));
        assert_eq!(versions(&store, &format!("ok-{i}")).await, [10 + i]);
    }
    let err = results[10].as_ref().expect_err("one id twice in an append");
    assert!(matches!(err, EventStoreError::Backend { .. }) && err.to_string().contains("UNIQUE"), "{err}");
    assert_eq!(store.stream_version(&s("one-id-twice")).await.expect("version"), Version(0), "nothing of it is stored");
    assert!(matches!(&results[11], Err(EventStoreError::ConcurrencyConflict { actual: Version(1), .. })), "{:?}", results[11]);
    assert!(stats.rewritten_groups > before.rewritten_groups, "the failing group was written again one append at a time: {stats:?}");
    assert_eq!(stats.failed_groups, 0, "{stats:?}");
    assert_eq!(store.event_count().await.expect("count"), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_writers_and_contenders_on_one_stream_each_get_their_own_result() {
    const WRITERS: u32 = 32;
    const APPENDS: u32 = 40;
    const CONTENDERS: u32 = 8;
    const CONTENDED: u32 = 20;
    let db = TempDb::new();
    let store = Arc::new(SqliteEventStore::open(&db.0).await.expect("open"));
    let before = store.group_commit_stats();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let stream = s(&format!("writer-{w}"));
            let (mut appended, mut version) = (Vec::new(), Version(0));
            for i in 0..APPENDS {
                // Alternately one and three events, the version expected exactly.
                let events: Vec<SerializedEvent> = (0..=2 * (i % 2)).map(|k| event(w * 10_000 + i * 10 + k)).collect();
                let n = events.len();
                let request = AppendRequest::new(stream.clone(), ExpectedVersion::from_loaded(version), events);
                let result = store.append(request).await.unwrap_or_else(|e| panic!("writer {w}: {e}"));
                assert_eq!((result.first_version, result.next_expected_version), (version.next(), Version(version.0 + n as u64)), "writer {w}");
                version = result.next_expected_version;
                appended.push((result, n));
            }
            (0_u64, appended)
        }));
    }
    for c in 0..CONTENDERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let stream = s("contended");
            let (mut conflicts, mut appended) = (0, Vec::new());
            for i in 0..CONTENDED {
                loop {
                    let v = store.stream_version(&stream).await.expect("version");
                    match store.append(AppendRequest::new(stream.clone(), ExpectedVersion::from_loaded(v), vec![event(900_000 + c * 1000 + i)])).await {
                        Ok(r) => {
                            assert_eq!(r.first_version, v.next(), "contender {c}");
                            appended.push((r, 1));
                            break;
                        }
                        Err(EventStoreError::ConcurrencyConflict { actual, .. }) => {
                            assert!(actual > v, "contender {c}: a conflict means the stream moved past {v}, it says {actual}");
                            conflicts += 1;
                        }
                        Err(e) => panic!("contender {c}: {e}"),
                    }
                }
            }
            (conflicts, appended)
        }));
    }
    let (mut results, mut conflicts) = (Vec::new(), 0);
    for t in tasks {
        let (refused, appended) = t.await.expect("task");
        conflicts += refused;
        results.extend(appended);
    }
    let stats = store.group_commit_stats();

    // Every writer's stream is whole and in its order.
    for w in 0..WRITERS {
        let got = versions(&store, &format!("writer-{w}")).await;
        let want: Vec<u32> = (0..APPENDS).flat_map(|i| (0..=2 * (i % 2)).map(move |k| w * 10_000 + i * 10 + k)).collect();
        assert_eq!(got, want, "writer {w}");
    }
    let contended = read_stream_to_end(&*store, &s("contended"), Version(1)).await.expect("read");
    assert_eq!(contended.len(), (CONTENDERS * CONTENDED) as usize);
    assert!(contended.iter().enumerate().all(|(i, e)| e.stream_version == Some(Version(i as u64 + 1))), "no gap, no duplicate");

    // Each result names its own events: first_position is where its first event is, and the
    // positions of all results are disjoint.
    let all = store.read_all(GlobalPosition(0), 100_000).await.expect("read_all");
    assert_eq!(all.len() as u64, store.event_count().await.expect("count"));
    assert!(all.windows(2).all(|w| w[0].position < w[1].position), "commit order");
    let by_position: std::collections::HashMap<u64, &composable_rust_core::RecordedEvent> = all.iter().map(|e| (e.position.0, e)).collect();
    let mut covered = std::collections::HashSet::new();
    for (r, n) in &results {
        for k in 0..*n as u64 {
            let e = by_position.get(&(r.first_position.0 + k)).expect("a position the log holds");
            assert_eq!(e.event.stream_version, Some(Version(r.first_version.0 + k)), "{r:?}");
            assert!(covered.insert(r.first_position.0 + k), "two results claim position {}", r.first_position.0 + k);
        }
    }
    assert_eq!(covered.len(), all.len(), "every stored event belongs to exactly one result");
    assert_eq!(stats.appends - before.appends, results.len() as u64 + conflicts, "every append went through the group writer: {stats:?}");
    assert!(stats.transactions - before.transactions < stats.appends - before.appends, "some appends shared a transaction: {stats:?}");
    assert_eq!(stats.failed_groups, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_append_is_a_transaction_of_its_own() {
    let store = SqliteEventStore::in_memory().await.expect("open");
    for i in 0..5 {
        store.append(AppendRequest::new(s("lone"), ExpectedVersion::from_loaded(Version(i)), vec![event(1)])).await.expect("append");
    }
    let stats = store.group_commit_stats();
    assert_eq!((stats.transactions, stats.appends, stats.largest_group), (5, 5, 1), "{stats:?}");
    assert_eq!(stats.inline_writes, 5, "a lone writer writes in its own task: {stats:?}");
    let off = SqliteEventStore::connect_with(SqliteConfig::in_memory().with_max_group(1)).await.expect("open");
    off.append(AppendRequest::new(s("lone"), ExpectedVersion::NoStream, vec![event(1)])).await.expect("append");
    assert_eq!(off.group_commit_stats().transactions, 0, "group commit off: nothing goes through the group writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_leaves_nothing_behind_and_blocks_nobody() {
    let db = TempDb::new();
    let store = SqliteEventStore::open(&db.0).await.expect("open");
    let blocker = hold_write_lock(&db.0).await;
    // The first write goes inline (the store was idle), the next ones to the writer task; all wait
    // for the lock, then their callers give up.
    let requests: Vec<AppendRequest> = (0..4).map(|i| AppendRequest::new(s(&format!("dropped-{i}")), ExpectedVersion::NoStream, vec![event(i)])).collect();
    drop(queue(&store, &requests).await);
    release(blocker).await;
    let kept = store.append(AppendRequest::new(s("kept"), ExpectedVersion::NoStream, vec![event(9)])).await.expect("an append after the dropped ones");
    assert_eq!(kept.first_version, Version(1));
    for i in 0..4 {
        assert_eq!(store.stream_version(&s(&format!("dropped-{i}"))).await.expect("version"), Version(0), "dropped append {i} wrote nothing");
    }
    // Concurrent appends still form groups afterwards.
    let results =
        futures::future::join_all((0..16).map(|i| store.append(AppendRequest::new(s(&format!("after-{i}")), ExpectedVersion::NoStream, vec![event(i)])))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.event_count().await.expect("count"), 17);
}

fn factory(max_group: usize, files: Arc<std::sync::Mutex<Vec<TempDb>>>) -> impl Fn() -> Pin<Box<dyn Future<Output = Arc<dyn EventStore>>>> {
    move || {
        let files = Arc::clone(&files);
        Box::pin(async move {
            let db = TempDb::new();
            let store = SqliteEventStore::connect_with(SqliteConfig::new(&db.0).with_max_group(max_group)).await.expect("open");
            files.lock().expect("files").push(db);
            Arc::new(store) as Arc<dyn EventStore>
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_group_commit_off_the_store_passes_the_conformance_suites() {
    let files = Arc::new(std::sync::Mutex::new(Vec::new()));
    event_store::run_all(factory(1, Arc::clone(&files))).await;
    deadlines::run_all(factory(1, files)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_groups_of_two_the_store_passes_the_conformance_suites() {
    let files = Arc::new(std::sync::Mutex::new(Vec::new()));
    event_store::run_all(factory(2, Arc::clone(&files))).await;
    deadlines::run_all(factory(2, files)).await;
}
