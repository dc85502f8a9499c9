//! The PostgreSQL store against a real server: the shared conformance suite, then what a concurrent,
//! durable store must do. The server comes from `support::database_url`.

use std::sync::Arc;

use composable_rust_core::{AppendRequest, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, SerializedEvent, StreamId, Version};
use composable_rust_postgres::{PostgresError, PostgresEventStore};
use composable_rust_testing::conformance::{deadlines, event_store};
use support::store;

mod support;

fn event(n: u32) -> SerializedEvent {
    SerializedEvent::new("Counted.v1", n.to_be_bytes().to_vec(), None)
}

fn stream(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    let Some(store) = store().await else { return };
    event_store::run_all(|| {
        let store = store.clone();
        async move { Arc::new(store) as Arc<dyn EventStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_deadline_conformance_suite() {
    let Some(store) = store().await else { return };
    deadlines::run_all(|| {
        let store = store.clone();
        async move { Arc::new(store) as Arc<dyn EventStore> }
    })
    .await;
}

fn deadline(consumer: &str, instance: String) -> composable_rust_core::StoredDeadline {
    composable_rust_core::StoredDeadline {
        id: uuid::Uuid::new_v4(),
        owner: composable_rust_core::DeadlineOwner::new(consumer, instance),
        name: "payment".into(),
        due_at: chrono::Utc::now() - chrono::Duration::hours(1),
        payload: bytes::Bytes::from_static(b"timeout"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_claimed_by_one_of_two_stores_on_the_same_database() {
    use std::collections::HashSet;
    use std::time::Duration;

    use composable_rust_core::DeadlineChange;

    // Two stores with pools of their own, as two processes would have them.
    let (Some(a), Some(b)) = (store().await, store().await) else { return };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let consumer = format!("saga.two-processes-{}", uuid::Uuid::new_v4().simple());
    let lease = Duration::from_secs(30);
    let mut all = HashSet::new();
    let mut due = None;
    for (n, store) in [&a, &b, &a, &b].into_iter().enumerate() {
        let changes: Vec<DeadlineChange> = (0..50)
            .map(|i| {
                let d = deadline(&consumer, format!("order-{n}-{i}"));
                all.insert(d.id);
                due = Some(due.map_or(d.due_at, |t: chrono::DateTime<chrono::Utc>| t.max(d.due_at)));
                DeadlineChange::Schedule(d)
            })
            .collect();
        store.append(AppendRequest::new(stream("steps"), ExpectedVersion::NoStream, vec![event(1)]).with_deadlines(changes)).await.unwrap();
    }
    let now = due.unwrap() + chrono::Duration::seconds(1);
    assert_eq!(b.deadlines(&consumer, None, 1000).await.unwrap().len(), 200, "each store sees the other's deadlines");

    let claimers: Vec<_> = (0..8)
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
    for store in [&a, &b] {
        assert!(store.claim_due_deadlines(&consumer, now + chrono::Duration::seconds(29), lease, 1000).await.unwrap().is_empty(), "held");
    }

    // Firing is one decision across stores too: of two appends marking it fired, one wins.
    let id = *all.iter().next().unwrap();
    let firing = stream("firing");
    let fire = |n: u32| AppendRequest::new(firing.clone(), ExpectedVersion::Any, vec![event(n)]).with_deadlines([DeadlineChange::Fire { id }]);
    let (first, second) = tokio::join!(a.append(fire(1)), b.append(fire(2)));
    let refused: Vec<_> = [first, second].into_iter().filter_map(Result::err).collect();
    assert_eq!(refused.len(), 1, "exactly one firing is refused: {refused:?}");
    assert!(matches!(refused[0], EventStoreError::DeadlineNotPending { id: r } if r == id), "{}", refused[0]);
    assert_eq!(a.stream_version(&firing).await.unwrap(), Version(1), "the refused firing stored nothing");
    let again = a.claim_due_deadlines(&consumer, now + chrono::Duration::seconds(30), lease, 1000).await.unwrap();
    assert_eq!(again.len(), 200, "claimable again once the lease ended");
    assert!(again.iter().all(|c| c.claims == 2 && c.fired == (c.deadline.id == id)), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_firing_fails_only_its_own_append_among_concurrent_ones() {
    use composable_rust_core::DeadlineChange;

    let Some(store) = store().await else { return };
    let store = Arc::new(store);
    let consumer = format!("saga.concurrent-{}", uuid::Uuid::new_v4().simple());
    let scheduled = deadline(&consumer, "order-1".into());
    store
        .append(AppendRequest::new(stream("schedule"), ExpectedVersion::NoStream, vec![event(0)]).with_deadlines([DeadlineChange::Schedule(scheduled.clone())]))
        .await
        .unwrap();
    // Plain appends (group commit combines them) at the same time as appends whose `Fire` is
    // refused (an unknown deadline) and one whose `Fire` is accepted.
    let tasks: Vec<_> = (0..48u32)
        .map(|i| {
            let store = Arc::clone(&store);
            let fire = match i % 4 {
                0 => Some(uuid::Uuid::new_v4()),
                1 if i == 1 => Some(scheduled.id),
                _ => None,
            };
            tokio::spawn(async move {
                let request =
                    AppendRequest::new(stream("burst"), ExpectedVersion::NoStream, vec![event(i)]).with_deadlines(fire.map(|id| DeadlineChange::Fire { id }));
                (fire, store.append(request).await)
            })
        })
        .collect();
    for t in tasks {
        let (fire, result) = t.await.unwrap();
        match fire {
            Some(id) if id != scheduled.id => assert!(matches!(result, Err(EventStoreError::DeadlineNotPending { id: r }) if r == id), "{result:?}"),
            _ => assert!(result.is_ok(), "{result:?}"),
        }
    }
    let claimed = store.claim_due_deadlines(&consumer, chrono::Utc::now(), std::time::Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].fired, "the accepted firing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_on_one_stream_leave_no_gap_and_no_duplicate() {
    let Some(store) = store().await else { return };
    let store = Arc::new(store);
    let s = stream("contended");
    let tasks: Vec<_> = (0..16u32)
        .map(|w| {
            let (store, s) = (Arc::clone(&store), s.clone());
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                for i in 0..200u32 {
                    loop {
                        let v = store.stream_version(&s).await.unwrap();
                        match store.append(AppendRequest::new(s.clone(), ExpectedVersion::from_loaded(v), vec![event(w * 1000 + i)])).await {
                            Ok(_) => break,
                            Err(EventStoreError::ConcurrencyConflict { .. }) => conflicts += 1,
                            Err(e) => panic!("writer {w}: {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let all = composable_rust_core::event_store::read_stream_to_end(&*store, &s, Version(1)).await.unwrap();
    assert_eq!(all.len(), 3200);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.stream_version, Some(Version(i as u64 + 1)));
    }
    let mut payloads: Vec<u32> = all.iter().map(|e| u32::from_be_bytes(e.data[..].try_into().unwrap())).collect();
    payloads.sort_unstable();
    payloads.dedup();
    assert_eq!(payloads.len(), 3200, "every append stored exactly once");
    assert!(conflicts > 0, "16 writers on one stream must have collided (losers get ConcurrencyConflict)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_during_concurrent_appends_sees_every_event_once_in_order() {
    let Some(store) = store().await else { return };
    let store = Arc::new(store);
    // From the current end: the database may hold other tests' (or a user's) events.
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM composable_rust.events").fetch_one(store.raw_pool()).await.unwrap();
    let start = GlobalPosition(u64::try_from(head).unwrap());
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let (store, marker) = (Arc::clone(&store), marker.clone());
            tokio::spawn(async move {
                let s = StreamId::new(format!("reader-{marker}-{w}")).unwrap();
                for i in 0..50u32 {
                    store.append(AppendRequest::new(s.clone(), ExpectedVersion::Any, vec![event(i)])).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut after = start;
    let mut rounds = 0;
    while seen.len() < 400 {
        for r in store.read_all(after, 64).await.unwrap() {
            assert!(r.position > after, "positions only grow");
            after = r.position;
            if r.event.stream_id.as_ref().is_some_and(|s| s.as_str().starts_with(&format!("reader-{marker}-"))) {
                seen.push(r.event.event_id);
            }
        }
        rounds += 1;
        assert!(rounds < 100_000, "reader made no progress");
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 400, "every event seen exactly once, none skipped");
}

/// A store on a database of its own, for tests that damage data on purpose.
async fn private_store() -> Option<PostgresEventStore> {
    let shared = store().await?;
    let name = format!("cr_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(shared.raw_pool()).await.unwrap();
    let url = support::database_url().unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let store = PostgresEventStore::connect(&format!("{base}/{name}")).await.unwrap();
    store.migrate().await.unwrap();
    Some(store)
}

#[tokio::test]
async fn a_corrupt_stored_row_is_a_typed_error_and_nothing_else_changes() {
    let Some(store) = private_store().await else { return };
    let s = stream("corrupt");
    store.append(AppendRequest::new(s.clone(), ExpectedVersion::NoStream, vec![event(1)])).await.unwrap();
    sqlx::query("UPDATE composable_rust.events SET metadata = '{\"unexpected\": true}' WHERE stream_id = $1")
        .bind(s.as_str())
        .execute(store.raw_pool())
        .await
        .unwrap();
    let err = store.read_stream(&s, Version(1), 10).await.unwrap_err();
    assert!(matches!(err, EventStoreError::Corrupt { .. }), "{err}");
    assert_eq!(store.stream_version(&s).await.unwrap(), Version(1));
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_explained() {
    let err = PostgresEventStore::connect("mysql://nope").await.unwrap_err();
    assert!(matches!(err, PostgresError::InvalidUrl { .. }), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = composable_rust_postgres::PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    config = config.with_acquire_timeout(std::time::Duration::from_secs(2));
    let err = PostgresEventStore::connect_with(config).await.unwrap_err();
    assert!(matches!(err, PostgresError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("is the server running"), "{err}");
}

#[tokio::test]
async fn a_store_used_before_migrate_says_so_and_keeps_the_sqlx_error() {
    let Some(shared) = store().await else { return };
    let name = format!("cr_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(shared.raw_pool()).await.unwrap();
    let url = support::database_url().unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let unmigrated = PostgresEventStore::connect(&format!("{base}/{name}")).await.unwrap();
    let err = unmigrated.stream_version(&stream("unmigrated")).await.unwrap_err();
    assert!(matches!(err, EventStoreError::Backend { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("call PostgresEventStore::migrate() once"), "the message says what to do: {err}");
    let sqlx_error = err.cause().and_then(|c| c.downcast_ref::<sqlx::Error>()).expect("the sqlx error is kept");
    assert!(matches!(sqlx_error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01")), "{sqlx_error:?}");
    assert!(std::error::Error::source(&err).is_some(), "the cause is the error's source");
    unmigrated.raw_pool().close().await;
    sqlx::query(&format!("DROP DATABASE {name}")).execute(shared.raw_pool()).await.unwrap();
}

mod read_side {
    //! The read side: the shared read-model conformance suite, and what two stores (processes) on
    //! one database must not do: both commit from the same checkpoint.

    use std::collections::HashSet;
    use std::sync::Arc;

    use bytes::Bytes;
    use composable_rust_core::{AppendRequest, DocChange, EventFilter, EventStore, ExpectedVersion, GlobalPosition, ReadModelError, ReadModelStore, StreamId};
    use composable_rust_postgres::PostgresEventStore;
    use composable_rust_testing::conformance::read_model;

    use super::{event, store};

    fn put(key: &str, value: &str) -> DocChange {
        DocChange::Put { key: key.into(), value: Bytes::from(value.as_bytes().to_vec()) }
    }

    fn uid() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_store_passes_the_read_model_conformance_suite() {
        // A database of its own: some cases expect the head to be their own last append, which the
        // other tests of this binary, appending to the shared database meanwhile, would move.
        let Some(store) = super::private_store().await else { return };
        let store = Arc::new(store);
        read_model::run_all(|| {
            let store = Arc::clone(&store);
            async move { (Arc::clone(&store) as Arc<dyn EventStore>, store as Arc<dyn ReadModelStore>) }
        })
        .await;
        let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(store.raw_pool()).await.unwrap();
        store.raw_pool().close().await;
        let shared = shared_store().await;
        sqlx::query(&format!("DROP DATABASE {name}")).execute(shared.raw_pool()).await.unwrap();
    }

    async fn shared_store() -> PostgresEventStore {
        store().await.expect("the database was reachable a moment ago")
    }

    /// One round of two commits racing from `expected`: exactly one must win, the other be refused
    /// with `CheckpointMoved` naming the winner's checkpoint, having written nothing.
    async fn race(a: &PostgresEventStore, b: &PostgresEventStore, projection: &str, expected: u64) -> GlobalPosition {
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
    async fn two_stores_on_one_database_never_both_commit_from_the_same_checkpoint() {
        // Two stores with pools of their own, as two processes would have them.
        let (Some(a), Some(b)) = (store().await, store().await) else { return };
        let projection = format!("race-{}", uid());
        let mut at = 0;
        for _ in 0..200 {
            at = race(&a, &b, &projection, at).await.0;
        }
        // First commits (from 0, no checkpoint row yet: both try to insert it) are exclusive too.
        for round in 0..200 {
            race(&a, &b, &format!("{projection}-first-{round}"), 0).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_swap_racing_commits_of_the_live_projection_leaves_the_shadow_in_place() {
        let (Some(a), Some(b)) = (store().await, store().await) else { return };
        for round in 0..50 {
            let live = format!("swap-{}", uid());
            let shadow = format!("{live}~rebuild");
            if round % 2 == 0 {
                a.commit(&live, GlobalPosition(0), GlobalPosition(10), vec![put("old", "1")]).await.unwrap();
            }
            b.commit(&shadow, GlobalPosition(0), GlobalPosition(7), vec![put("new", "1")]).await.unwrap();
            let from = if round % 2 == 0 { 10 } else { 0 };
            let (committed, swapped) = tokio::join!(a.commit(&live, GlobalPosition(from), GlobalPosition(20), vec![put("late", "1")]), b.swap(&live, &shadow));
            swapped.expect("the swap succeeds whatever commits race it");
            // Whether the commit ran before the swap or was refused after it, the shadow is live.
            assert!(matches!(committed, Ok(()) | Err(ReadModelError::CheckpointMoved { .. })), "{committed:?}");
            assert_eq!(a.checkpoint(&live).await.unwrap().position, GlobalPosition(7));
            let keys: Vec<String> = a.list(&live, "", 10).await.unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["new"]);
            assert_eq!(a.checkpoint(&shadow).await.unwrap().position, GlobalPosition(0));
            assert!(a.list(&shadow, "", 10).await.unwrap().is_empty());
        }
        // A shadow never committed swaps in as "never committed".
        let live = format!("swap-{}", uid());
        a.commit(&live, GlobalPosition(0), GlobalPosition(3), vec![put("x", "1")]).await.unwrap();
        a.swap(&live, &format!("{live}~empty")).await.unwrap();
        let cp = a.checkpoint(&live).await.unwrap();
        assert_eq!((cp.position, cp.updated_at), (GlobalPosition(0), None));
        assert!(a.list(&live, "", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn prefixes_and_categories_take_like_wildcards_literally() {
        let Some(store) = store().await else { return };
        let p = format!("wildcards-{}", uid());
        let keys = ["a%b", "a_c", "abc", "a%", "a", "b", "B"];
        store.commit(&p, GlobalPosition(0), GlobalPosition(1), keys.iter().map(|k| put(k, k)).collect()).await.unwrap();
        let listed = |prefix: &'static str| {
            let (store, p) = (store.clone(), p.clone());
            async move { store.list(&p, prefix, 100).await.unwrap().into_iter().map(|(k, _)| k).collect::<Vec<_>>() }
        };
        assert_eq!(listed("a%").await, ["a%", "a%b"]);
        assert_eq!(listed("a_").await, ["a_c"]);
        assert_eq!(listed("a").await, ["a", "a%", "a%b", "a_c", "abc"], "key (byte) order");
        assert_eq!(listed("").await, ["B", "a", "a%", "a%b", "a_c", "abc", "b"], "byte order, whatever the database's locale");
        assert!(listed("c").await.is_empty());

        let u = uid();
        let start = store.head().await.unwrap();
        let mut last = start;
        for stream in ["x_y{u}-1", "xzy{u}-1", "x%{u}-1", "xa{u}-1", "x_y{u}", "x_y{u}z-1", "x_y{u}-2-3"] {
            let stream = StreamId::new(stream.replace("{u}", &u)).unwrap();
            last = store.append(AppendRequest::new(stream, ExpectedVersion::Any, vec![event(1)])).await.unwrap().first_position;
        }
        let streams = |filter: EventFilter| {
            let store = store.clone();
            let u = u.clone();
            async move {
                let page = store.read_all_filtered(start, 100_000, &filter).await.unwrap();
                assert!(page.scanned_to >= last, "looked up to the horizon");
                page.events.into_iter().map(|e| e.event.stream_id.unwrap().as_str().replace(&u, "")).collect::<Vec<_>>()
            }
        };
        assert_eq!(streams(EventFilter::all().category(format!("x_y{u}"))).await, ["x_y-1", "x_y-2-3"]);
        assert_eq!(streams(EventFilter::all().category(format!("x%{u}"))).await, ["x%-1"]);
        assert_eq!(streams(EventFilter::all().category(format!("x_y{u}")).category(format!("xa{u}"))).await, ["x_y-1", "xa-1", "x_y-2-3"]);
        assert!(streams(EventFilter::all().category(format!("x_y{u}")).event_type("Other.v1")).await.is_empty());
        let after_last = store.read_all_filtered(GlobalPosition(u64::MAX >> 2), 10, &EventFilter::all()).await.unwrap();
        assert_eq!(after_last.scanned_to, GlobalPosition(u64::MAX >> 2), "never moves back");
        assert_eq!(store.read_all_filtered(start, 0, &EventFilter::all()).await.unwrap().scanned_to, start);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_filtered_reader_during_concurrent_appends_sees_every_matching_event_once_in_order() {
        let Some(store) = store().await else { return };
        let store = Arc::new(store);
        let cat = format!("late{}", uid());
        let start = store.head().await.unwrap();
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (store, cat) = (Arc::clone(&store), cat.clone());
                tokio::spawn(async move {
                    for i in 0..25 {
                        let wanted = StreamId::new(format!("{cat}-{w}")).unwrap();
                        store.append(AppendRequest::new(wanted, ExpectedVersion::Any, vec![event(i)])).await.unwrap();
                        let noise = StreamId::new(format!("noise{cat}-{w}")).unwrap();
                        store.append(AppendRequest::new(noise, ExpectedVersion::Any, vec![event(i)])).await.unwrap();
                    }
                })
            })
            .collect();
        let filter = EventFilter::all().category(cat.clone());
        let (mut position, mut seen) = (start, Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while seen.len() < 400 {
            assert!(std::time::Instant::now() < deadline, "saw {} of 400 events in 60 s", seen.len());
            let page = store.read_all_filtered(position, 7, &filter).await.unwrap();
            assert!(page.scanned_to >= position);
            assert!(page.events.iter().all(|e| e.position > position && e.position <= page.scanned_to));
            position = page.scanned_to;
            seen.extend(page.events);
        }
        for w in writers {
            w.await.unwrap();
        }
        assert!(seen.windows(2).all(|w| w[0].position < w[1].position), "in commit order, no repeats");
        let ids: HashSet<uuid::Uuid> = seen.iter().map(|e| e.event.event_id).collect();
        assert_eq!((seen.len(), ids.len()), (400, 400), "every matching event seen exactly once, none skipped");
        assert!(store.read_all_filtered(position, 100, &filter).await.unwrap().events.is_empty());
    }
}
