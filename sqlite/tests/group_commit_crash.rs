//! Crash safety of group commit: a child process (this same test, run again by the parent with
//! `CR_SQLITE_CRASH_CHILD` naming the database) appends from 32 tasks at once, three events per
//! append, each with an outbox intent it then marks published, so that its writes go in groups; it
//! is killed with SIGKILL while it writes, three times over, each new child going on from what the
//! file holds. After each kill, every stream holds whole appends only, in order, with no gap, its
//! version row agrees, every append the child saw acknowledged is there, and the log reads in
//! position order.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{AppendRequest, EventStore, ExpectedVersion, GlobalPosition, OutboxIntent, SerializedEvent, StreamId, Topic, Version};
use composable_rust_sqlite::SqliteEventStore;

const CHILD: &str = "CR_SQLITE_CRASH_CHILD";
const WRITERS: u32 = 32;
const EVENTS_PER_APPEND: u64 = 3;
const TEST_NAME: &str = "a_process_killed_while_writing_in_groups_leaves_every_append_whole_or_absent";

fn stream(w: u32) -> StreamId {
    StreamId::new(format!("crash-{w}")).expect("stream id")
}

/// The `k`-th event of append `a` of writer `w`.
fn payload(w: u32, a: u64, k: u64) -> Bytes {
    Bytes::from(format!("{w}/{a}/{k}"))
}

fn acks_path(db: &Path) -> PathBuf {
    db.with_extension("acks")
}

/// The child: appends until killed (or, should the parent be gone, for a minute), writing a line
/// `writer version` to the acknowledgement file after each acknowledged append.
async fn child(db: &Path) {
    let store = Arc::new(SqliteEventStore::open(db).await.expect("child: open"));
    let acks = Arc::new(std::sync::Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(acks_path(db)).expect("child: acks file")));
    let topic = Topic::new("crash.events").expect("topic");
    let end = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, acks, topic) = (Arc::clone(&store), Arc::clone(&acks), topic.clone());
            tokio::spawn(async move {
                let mut version = store.stream_version(&stream(w)).await.expect("child: version");
                while Instant::now() < end {
                    let a = version.0 / EVENTS_PER_APPEND;
                    let events: Vec<SerializedEvent> = (0..EVENTS_PER_APPEND).map(|k| SerializedEvent::new("Crash.v1", payload(w, a, k), None)).collect();
                    let mut request = AppendRequest::new(stream(w), ExpectedVersion::from_loaded(version), events);
                    request.outbox = vec![OutboxIntent { topic: topic.clone(), event_id: request.events[0].event_id }];
                    let marked = request.events[0].event_id;
                    version = store.append(request).await.expect("child: append").next_expected_version;
                    writeln!(acks.lock().expect("acks"), "{w} {}", version.0).expect("child: ack");
                    store.mark_published(marked, &topic).await.expect("child: mark");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("child: writer");
    }
}

/// The highest acknowledged version of each writer, from the complete lines of the file.
fn acknowledged(db: &Path) -> HashMap<u32, u64> {
    let text = std::fs::read_to_string(acks_path(db)).unwrap_or_default();
    let mut acked = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.split(' ');
        let (Some(w), Some(v)) = (parts.next().and_then(|w| w.parse().ok()), parts.next().and_then(|v| v.parse().ok())) else {
            continue; // the last line, cut by the kill
        };
        let top = acked.entry(w).or_insert(0);
        *top = (*top).max(v);
    }
    acked
}

async fn check_whole(db: &Path, round: usize) -> u64 {
    let store = SqliteEventStore::open(db).await.expect("reopen after the kill");
    let integrity: String = {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display())).await.expect("check connection");
        let ok = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.expect("integrity check");
        pool.close().await;
        ok
    };
    assert_eq!(integrity, "ok", "round {round}");
    let acked = acknowledged(db);
    let mut total = 0;
    for w in 0..WRITERS {
        let events = read_stream_to_end(&store, &stream(w), Version(1)).await.expect("read");
        let n = events.len() as u64;
        assert_eq!(n % EVENTS_PER_APPEND, 0, "round {round}, writer {w}: {n} events is not a number of whole appends");
        for (i, e) in (0_u64..).zip(&events) {
            assert_eq!(e.stream_version, Some(Version(i + 1)), "round {round}, writer {w}: no gap");
            assert_eq!(e.data, payload(w, i / EVENTS_PER_APPEND, i % EVENTS_PER_APPEND), "round {round}, writer {w}: event {}", i + 1);
        }
        assert_eq!(store.stream_version(&stream(w)).await.expect("version"), Version(n), "round {round}, writer {w}: the version row agrees");
        let acked = acked.get(&w).copied().unwrap_or(0);
        assert!(acked <= n, "round {round}, writer {w}: acknowledged version {acked} is lost (the stream holds {n})");
        total += n;
    }
    let all = store.read_all(GlobalPosition(0), 1_000_000).await.expect("read_all");
    assert_eq!(all.len() as u64, total, "round {round}: the log holds exactly the streams' events");
    assert!(all.windows(2).all(|p| p[0].position < p[1].position), "round {round}: position order");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_while_writing_in_groups_leaves_every_append_whole_or_absent() {
    if let Ok(db) = std::env::var(CHILD) {
        child(Path::new(&db)).await;
        return;
    }
    let db = std::env::temp_dir().join(format!("cr-sqlite-crash-{}.db", uuid::Uuid::new_v4().simple()));
    let mut total = 0;
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD, &db)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        // Until the child has appended a few hundred times more than the last one, then a kill at
        // a moment that varies from round to round.
        let start = Instant::now();
        let before: u64 = acknowledged(&db).values().sum();
        while acknowledged(&db).values().sum::<u64>() < before + 600 * EVENTS_PER_APPEND {
            assert!(child.try_wait().expect("child status").is_none(), "round {round}: the child stopped by itself");
            assert!(start.elapsed() < Duration::from_secs(120), "round {round}: the child appends too slowly");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(7 * round as u64)).await;
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(!status.success(), "round {round}: the child was killed, it did not finish: {status:?}");
        let now = check_whole(&db, round).await;
        assert!(now > total, "round {round}: the child appended");
        total = now;
    }
    for suffix in [".db", ".db-wal", ".db-shm", ".acks"] {
        let _ = std::fs::remove_file(db.with_extension("").with_extension(&suffix[1..]));
    }
}
