//! The PostgreSQL store against a real server: the shared conformance suite, then what a concurrent,
//! durable store must do. The server comes from `support::database_url`.

use std::sync::Arc;

use composable_rust_core::{AppendRequest, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, SerializedEvent, StreamId, Version};
use composable_rust_postgres::{PostgresError, PostgresEventStore};
use composable_rust_testing::conformance::event_store;
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
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM composable_rust.events").fetch_one(store.pool()).await.unwrap();
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
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(shared.pool()).await.unwrap();
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
        .execute(store.pool())
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
    config.acquire_timeout = std::time::Duration::from_secs(2);
    let err = PostgresEventStore::connect_with(config).await.unwrap_err();
    assert!(matches!(err, PostgresError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("is the server running"), "{err}");
}

#[tokio::test]
async fn a_store_used_before_migrate_says_so_and_keeps_the_sqlx_error() {
    let Some(shared) = store().await else { return };
    let name = format!("cr_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(shared.pool()).await.unwrap();
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
    unmigrated.pool().close().await;
    sqlx::query(&format!("DROP DATABASE {name}")).execute(shared.pool()).await.unwrap();
}
