//! The SQLite store: the shared conformance suite, plus what a file-backed store must do.

use std::path::PathBuf;
use std::sync::Arc;

use composable_rust_core::{AppendRequest, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, SerializedEvent, StreamId, Version};
use composable_rust_sqlite::{SqliteError, SqliteEventStore};
use composable_rust_testing::conformance::{deadlines, event_store};

/// A fresh database file, removed with its WAL files when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("cr-sqlite-{}.db", uuid::Uuid::new_v4().simple())))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    let dbs = Arc::new(temp_files::Files::default());
    let files = Arc::clone(&dbs);
    event_store::run_all(move || {
        let files = Arc::clone(&files);
        async move {
            let db = TempDb::new();
            let store = SqliteEventStore::open(&db.0).await.expect("open");
            files.keep(db);
            Arc::new(store) as Arc<dyn EventStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_deadline_conformance_suite() {
    let files = Arc::new(temp_files::Files::default());
    deadlines::run_all(move || {
        let files = Arc::clone(&files);
        async move {
            let db = TempDb::new();
            let store = SqliteEventStore::open(&db.0).await.expect("open");
            files.keep(db);
            Arc::new(store) as Arc<dyn EventStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_store_passes_the_deadline_conformance_suite() {
    deadlines::run_all(|| async { Arc::new(SqliteEventStore::connect("sqlite::memory:").await.expect("open")) as Arc<dyn EventStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_claimed_by_one_of_two_stores_on_the_same_file() {
    use std::collections::HashSet;
    use std::time::Duration;

    use composable_rust_core::{DeadlineChange, DeadlineOwner, StoredDeadline};

    // Two stores with pools of their own on one file, as two processes would have them.
    let db = TempDb::new();
    let a = Arc::new(SqliteEventStore::open(&db.0).await.unwrap());
    let b = Arc::new(SqliteEventStore::open(&db.0).await.unwrap());
    let consumer = format!("saga.two-processes-{}", uuid::Uuid::new_v4().simple());
    let due = chrono::Utc::now() - chrono::Duration::hours(1);
    let now = due + chrono::Duration::seconds(1);
    let lease = Duration::from_secs(30);
    let mut all = HashSet::new();
    for (n, store) in [&a, &b, &a, &b].into_iter().enumerate() {
        let changes: Vec<DeadlineChange> = (0..25)
            .map(|i| {
                let d = StoredDeadline {
                    id: uuid::Uuid::new_v4(),
                    owner: DeadlineOwner::new(consumer.clone(), format!("order-{n}-{i}")),
                    name: "payment".into(),
                    due_at: due,
                    payload: bytes::Bytes::from_static(b"timeout"),
                };
                all.insert(d.id);
                DeadlineChange::Schedule(d)
            })
            .collect();
        let step = StreamId::new(format!("steps-{n}")).unwrap();
        store.append(AppendRequest::new(step, ExpectedVersion::NoStream, vec![event(1)]).with_deadlines(changes)).await.unwrap();
    }
    assert_eq!(b.deadlines(&consumer, None, 1000).await.unwrap().len(), 100, "each store sees the other's deadlines");

    let claimers: Vec<_> = (0..6)
        .map(|k| {
            let store = Arc::clone(if k % 2 == 0 { &a } else { &b });
            let consumer = consumer.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store.claim_due_deadlines(&consumer, now, lease, 3).await.expect("claim");
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|c| c.deadline.id));
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for c in claimers {
        seen.extend(c.await.unwrap());
    }
    let unique: HashSet<uuid::Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a deadline was claimed through both stores while the first claim held");
    assert_eq!(unique, all, "every due deadline was claimed");
    assert!(a.claim_due_deadlines(&consumer, now + chrono::Duration::seconds(29), lease, 1000).await.unwrap().is_empty(), "held");
    assert!(b.claim_due_deadlines(&consumer, now + chrono::Duration::seconds(29), lease, 1000).await.unwrap().is_empty(), "held");

    // Firing is one decision across stores too: the first append marking it fired wins.
    let id = *all.iter().next().unwrap();
    let fire = |n: u8| AppendRequest::new(StreamId::new("firing").unwrap(), ExpectedVersion::Any, vec![event(n)]).with_deadlines([DeadlineChange::Fire { id }]);
    b.append(fire(1)).await.expect("the first firing is stored");
    let err = a.append(fire(2)).await.unwrap_err();
    assert!(matches!(err, EventStoreError::DeadlineNotPending { id: refused } if refused == id), "{err}");
    assert_eq!(a.stream_version(&StreamId::new("firing").unwrap()).await.unwrap(), Version(1), "the refused firing stored nothing");
    let again = a.claim_due_deadlines(&consumer, now + chrono::Duration::seconds(30), lease, 1000).await.unwrap();
    assert_eq!(again.len(), 100, "claimable again once the lease ended");
    assert!(again.iter().all(|c| c.claims == 2 && c.fired == (c.deadline.id == id)), "{again:?}");
}

mod temp_files {
    /// Keeps temp files alive until the test ends.
    #[derive(Default)]
    pub struct Files(std::sync::Mutex<Vec<super::TempDb>>);

    impl Files {
        pub fn keep(&self, db: super::TempDb) {
            self.0.lock().unwrap().push(db);
        }
    }
}

fn event(n: u8) -> SerializedEvent {
    SerializedEvent::new("Counted.v1", vec![n], None)
}

#[tokio::test]
async fn events_survive_closing_and_reopening_the_file() {
    let db = TempDb::new();
    let stream = StreamId::new("order-1").unwrap();
    {
        let store = SqliteEventStore::open(&db.0).await.unwrap();
        store.append(AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(1), event(2)])).await.unwrap();
    }
    let store = SqliteEventStore::open(&db.0).await.unwrap();
    let read = store.read_stream(&stream, Version(1), 10).await.unwrap();
    assert_eq!(read.iter().map(|e| e.data[0]).collect::<Vec<_>>(), vec![1, 2]);
    let err = store.append(AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(3)])).await.unwrap_err();
    assert!(matches!(err, EventStoreError::ConcurrencyConflict { actual: Version(2), .. }), "{err}");
    assert_eq!(store.event_count().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_during_concurrent_appends_sees_every_event_once_in_order() {
    let db = TempDb::new();
    let store = Arc::new(SqliteEventStore::open(&db.0).await.unwrap());
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let stream = StreamId::new(format!("w-{w}")).unwrap();
                for i in 0..50u8 {
                    store.append(AppendRequest::new(stream.clone(), ExpectedVersion::Any, vec![event(i)])).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut after = GlobalPosition(0);
    while seen.len() < 200 {
        for r in store.read_all(after, 16).await.unwrap() {
            assert!(r.position > after, "positions only grow");
            after = r.position;
            seen.push(r.event.event_id);
        }
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200, "every event seen exactly once");
    assert!(store.read_all(after, 16).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_corrupt_stored_row_is_a_typed_error_and_nothing_else_changes() {
    let db = TempDb::new();
    let stream = StreamId::new("order-9").unwrap();
    let store = SqliteEventStore::open(&db.0).await.unwrap();
    store.append(AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(1)])).await.unwrap();
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.0.display())).await.unwrap();
        sqlx::query("UPDATE events SET metadata = 'not json'").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let err = store.read_stream(&stream, Version(1), 10).await.unwrap_err();
    assert!(matches!(err, EventStoreError::Corrupt { .. }), "{err}");
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(1), "the stream itself is intact");
}

#[tokio::test]
async fn an_unusable_path_is_explained() {
    let err = SqliteEventStore::open("/nonexistent-dir/sub/events.db").await.unwrap_err();
    assert!(matches!(err, SqliteError::Open { .. }), "{err}");
    assert!(err.to_string().contains("check that the directory exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_on_one_stream_leave_no_gap_and_no_duplicate() {
    let db = TempDb::new();
    let store = Arc::new(SqliteEventStore::open(&db.0).await.unwrap());
    let stream = StreamId::new("contended").unwrap();
    let tasks: Vec<_> = (0..16u32)
        .map(|w| {
            let (store, stream) = (Arc::clone(&store), stream.clone());
            tokio::spawn(async move {
                for i in 0..200u32 {
                    loop {
                        let v = store.stream_version(&stream).await.unwrap();
                        let e = SerializedEvent::new("Counted.v1", (w * 1000 + i).to_be_bytes().to_vec(), None);
                        match store.append(AppendRequest::new(stream.clone(), ExpectedVersion::from_loaded(v), vec![e])).await {
                            Ok(_) => break,
                            Err(EventStoreError::ConcurrencyConflict { .. }) => {}
                            Err(e) => panic!("writer {w}: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = composable_rust_core::event_store::read_stream_to_end(&*store, &stream, Version(1)).await.unwrap();
    assert_eq!(all.len(), 3200);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.stream_version, Some(Version(i as u64 + 1)), "no gap, no duplicate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_openers_of_a_new_file_all_get_the_schema() {
    // Separate pools, as separate processes would have: none may fail on the migration race.
    let db = TempDb::new();
    let opens = (0..6).map(|_| SqliteEventStore::open(db.0.clone()));
    let stores = futures::future::join_all(opens).await;
    for (i, s) in stores.into_iter().enumerate() {
        let store = s.unwrap_or_else(|e| panic!("opener {i}: {e}"));
        let stream = StreamId::new(format!("opener-{i}")).unwrap();
        store.append(AppendRequest::new(stream, ExpectedVersion::NoStream, vec![event(1)])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_url_reads_back_what_was_appended() {
    for url in ["sqlite::memory:", "sqlite://:memory:"] {
        let store = SqliteEventStore::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let stream = StreamId::new("in-memory").unwrap();
        store.append(AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(1), event(2)])).await.unwrap();
        // Several reads at once, so a pool with several connections would hand out more than one.
        let reads = futures::future::join_all((0..8).map(|_| store.read_stream(&stream, Version(1), 10))).await;
        for read in reads {
            let read = read.unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(read.iter().map(|e| e.data[0]).collect::<Vec<_>>(), vec![1, 2], "{url}");
        }
        assert_eq!(store.stream_version(&stream).await.unwrap(), Version(2), "{url}");
        let other = SqliteEventStore::connect(url).await.unwrap();
        assert_eq!(other.stream_version(&stream).await.unwrap(), Version(0), "{url}: every in-memory store is a database of its own");
    }
}

#[tokio::test]
async fn a_url_without_a_path_is_refused() {
    for url in ["sqlite:", "sqlite://"] {
        let err = SqliteEventStore::connect(url).await.err().unwrap_or_else(|| panic!("{url:?} must be refused"));
        assert!(matches!(err, SqliteError::InvalidUrl(_)), "{url:?}: {err}");
        assert!(err.to_string().contains("sqlite::memory:"), "{url:?}: the error says how to ask for an in-memory store: {err}");
    }
    let err = SqliteEventStore::open("").await.expect_err("an empty path must be refused");
    assert!(matches!(err, SqliteError::EmptyPath { .. }), "{err}");
    assert!(matches!(SqliteEventStore::connect("").await, Err(SqliteError::InvalidUrl(_))), "not a sqlite: URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_store_passes_the_conformance_suite() {
    event_store::run_all(|| async { Arc::new(SqliteEventStore::connect("sqlite::memory:").await.expect("open")) as Arc<dyn EventStore> }).await;
}

#[tokio::test]
async fn a_failed_query_keeps_the_sqlx_error_as_its_source() {
    let db = TempDb::new();
    let store = SqliteEventStore::open(&db.0).await.unwrap();
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.0.display())).await.unwrap();
        sqlx::query("DROP TABLE snapshots").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let err = store.load_snapshot(&StreamId::new("s").unwrap()).await.unwrap_err();
    assert!(matches!(err, EventStoreError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("no such table"), "the message says what went wrong: {err}");
    let source = std::error::Error::source(&err).expect("the sqlx error is the source");
    assert!(source.to_string().contains("no such table"), "{source}");
    let sqlx_error = err.cause().and_then(|c| c.downcast_ref::<sqlx::Error>()).expect("the sqlx error can be had back");
    assert!(matches!(sqlx_error, sqlx::Error::Database(_)), "{sqlx_error:?}");
}

#[tokio::test]
async fn outbox_rows_published_before_the_retention_migration_are_pruned_by_their_time() {
    // Before the retention migration, published_at was RFC 3339 with an offset and nanoseconds, which
    // does not sort as text against the schema's format; the migration rewrites it.
    let db = TempDb::new();
    let stream = StreamId::new("legacy").unwrap();
    let topic = composable_rust_core::Topic::new("legacy.events").unwrap();
    let store = SqliteEventStore::open(&db.0).await.unwrap();
    let events = vec![event(1), event(2)];
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let mut request = AppendRequest::new(stream, ExpectedVersion::NoStream, events);
    request.outbox = ids.iter().map(|id| composable_rust_core::OutboxIntent { topic: topic.clone(), event_id: *id }).collect();
    store.append(request).await.unwrap();
    store.mark_published(ids[0], &topic).await.unwrap();
    store.mark_published(ids[1], &topic).await.unwrap();
    drop(store);
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let in_two_hours = chrono::Utc::now() + chrono::Duration::hours(2);
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.0.display())).await.unwrap();
        // One row published an hour ago, one (as a skewed clock might have it) in two hours, both in
        // the old format and an offset other than UTC for the second.
        for (id, at) in [(ids[0], hour_ago.to_rfc3339()), (ids[1], in_two_hours.with_timezone(&chrono::FixedOffset::east_opt(7200).unwrap()).to_rfc3339())] {
            sqlx::query("UPDATE outbox SET published_at = ? WHERE event_id = ?").bind(at).bind(id.as_bytes().to_vec()).execute(&pool).await.unwrap();
        }
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261125000003").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store = SqliteEventStore::open(&db.0).await.unwrap();
    let report = store.prune(chrono::Utc::now()).await.unwrap();
    assert_eq!(report.outbox_rows, 1, "the row published an hour ago goes, the one in two hours stays");
    let report = store.prune(in_two_hours + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(report.outbox_rows, 1, "the other one goes once the horizon passes it");
    assert!(store.pending_publications(10).await.unwrap().is_empty(), "no published row became pending");
}

mod read_side {
    //! The read side: the shared read-model conformance suite, and what two stores (processes) on
    //! one file must not do: both commit from the same checkpoint.

    use std::sync::Arc;

    use bytes::Bytes;
    use composable_rust_core::{DocChange, EventFilter, EventStore, GlobalPosition, ReadModelError, ReadModelStore};
    use composable_rust_sqlite::SqliteEventStore;
    use composable_rust_testing::conformance::read_model;

    use super::{TempDb, temp_files};

    fn both(store: SqliteEventStore) -> read_model::Stores {
        let store = Arc::new(store);
        (Arc::clone(&store) as Arc<dyn EventStore>, store as Arc<dyn ReadModelStore>)
    }

    fn put(key: &str, value: &str) -> DocChange {
        DocChange::Put { key: key.into(), value: Bytes::from(value.as_bytes().to_vec()) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_passes_the_read_model_conformance_suite() {
        let files = Arc::new(temp_files::Files::default());
        read_model::run_all(move || {
            let files = Arc::clone(&files);
            async move {
                let db = TempDb::new();
                let store = SqliteEventStore::open(&db.0).await.expect("open");
                files.keep(db);
                both(store)
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_memory_store_passes_the_read_model_conformance_suite() {
        read_model::run_all(|| async { both(SqliteEventStore::in_memory().await.expect("open")) }).await;
    }

    /// Both outcomes of one round of two commits racing from `expected`: exactly one must win, the
    /// other be refused with `CheckpointMoved` naming the winner's checkpoint.
    async fn race(a: &Arc<SqliteEventStore>, b: &Arc<SqliteEventStore>, projection: &str, expected: u64) -> GlobalPosition {
        let (to_a, to_b) = (GlobalPosition(expected + 1), GlobalPosition(expected + 2));
        let (ra, rb) = tokio::join!(
            a.commit(projection, GlobalPosition(expected), to_a, vec![put("winner", "a"), put(&format!("a{expected}"), "1")]),
            b.commit(projection, GlobalPosition(expected), to_b, vec![put("winner", "b"), put(&format!("b{expected}"), "1")]),
        );
        let (winner, to, refused) = match (ra, rb) {
            (Ok(()), Err(e)) => ("a", to_a, e),
            (Err(e), Ok(())) => ("b", to_b, e),
            (ra, rb) => panic!("round from {expected}: exactly one of two racing commits must succeed, got {ra:?} and {rb:?}"),
        };
        match refused {
            ReadModelError::CheckpointMoved { expected: e, actual, .. } => assert_eq!((e, actual), (GlobalPosition(expected), to), "round from {expected}"),
            other => panic!("round from {expected}: the loser must get CheckpointMoved, got {other:?}"),
        }
        assert_eq!(a.checkpoint(projection).await.unwrap().position, to);
        assert_eq!(b.get(projection, "winner").await.unwrap().as_deref(), Some(winner.as_bytes()), "the winner's documents");
        let loser = if winner == "a" { "b" } else { "a" };
        assert_eq!(a.get(projection, &format!("{loser}{expected}")).await.unwrap(), None, "the refused commit wrote nothing");
        to
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file_never_both_commit_from_the_same_checkpoint() {
        let db = TempDb::new();
        let a = Arc::new(SqliteEventStore::open(&db.0).await.unwrap());
        let b = Arc::new(SqliteEventStore::open(&db.0).await.unwrap());
        let projection = format!("race-{}", uuid::Uuid::new_v4().simple());
        let mut at = 0;
        for _ in 0..200 {
            at = race(&a, &b, &projection, at).await.0;
        }
        // First commits (from 0, no checkpoint row yet) are exclusive too.
        for round in 0..100 {
            race(&a, &b, &format!("{projection}-first-{round}"), 0).await;
        }
    }

    #[tokio::test]
    async fn prefixes_and_categories_take_like_wildcards_literally() {
        let store = SqliteEventStore::in_memory().await.unwrap();
        let p = "wildcards";
        let keys = ["a%b", "a_c", "abc", "a%", "a", "b"];
        store.commit(p, GlobalPosition(0), GlobalPosition(1), keys.iter().map(|k| put(k, k)).collect()).await.unwrap();
        let listed = |prefix: &'static str| {
            let store = store.clone();
            async move { store.list(p, prefix, 100).await.unwrap().into_iter().map(|(k, _)| k).collect::<Vec<_>>() }
        };
        assert_eq!(listed("a%").await, ["a%", "a%b"]);
        assert_eq!(listed("a_").await, ["a_c"]);
        assert_eq!(listed("a").await, ["a", "a%", "a%b", "a_c", "abc"], "key (byte) order");
        assert_eq!(listed("").await.len(), keys.len());
        assert!(listed("c").await.is_empty());

        let append = |stream: &str| {
            composable_rust_core::AppendRequest::new(
                composable_rust_core::StreamId::new(stream).unwrap(),
                composable_rust_core::ExpectedVersion::Any,
                vec![super::event(1)],
            )
        };
        for stream in ["x_y-1", "xzy-1", "x%-1", "xa-1", "x_y", "x_yz-1", "x_y-2-3"] {
            store.append(append(stream)).await.unwrap();
        }
        let streams = |filter: EventFilter| {
            let store = store.clone();
            async move {
                let page = store.read_all_filtered(GlobalPosition(0), 100, &filter).await.unwrap();
                page.events.into_iter().map(|e| e.event.stream_id.unwrap().as_str().to_string()).collect::<Vec<_>>()
            }
        };
        assert_eq!(streams(EventFilter::all().category("x_y")).await, ["x_y-1", "x_y-2-3"]);
        assert_eq!(streams(EventFilter::all().category("x%")).await, ["x%-1"]);
        assert_eq!(streams(EventFilter::all().category("x_y").category("xa")).await, ["x_y-1", "xa-1", "x_y-2-3"]);
        assert!(streams(EventFilter::all().category("x_y").event_type("Other.v1")).await.is_empty());
        assert_eq!(streams(EventFilter::all().event_type("Counted.v1")).await.len(), 7);
        let page = store.read_all_filtered(GlobalPosition(0), 100, &EventFilter::all().category("none")).await.unwrap();
        assert_eq!((page.events.len(), page.scanned_to), (0, GlobalPosition(7)), "nothing matched: looked up to the head");
        let page = store.read_all_filtered(GlobalPosition(2), 3, &EventFilter::all().category("x_y")).await.unwrap();
        assert_eq!(page.scanned_to, GlobalPosition(5), "looked at 3 events");
        assert!(page.events.is_empty());
        assert_eq!(store.read_all_filtered(GlobalPosition(9), 3, &EventFilter::all()).await.unwrap().scanned_to, GlobalPosition(9), "never moves back");
        assert_eq!(store.read_all_filtered(GlobalPosition(0), 0, &EventFilter::all()).await.unwrap().scanned_to, GlobalPosition(0));
        assert_eq!(store.head().await.unwrap(), GlobalPosition(7));
    }
}
