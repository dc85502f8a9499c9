//! Replaying the log through a no-op projection (`ProjectionRunner::catch_up`, 1,000 events per
//! batch, one checkpoint commit each) against a raw paged `SELECT` of the same rows and columns, in
//! the same run, on the same file. `CR_REPLAY_EVENTS` events (default 1,000,000) are appended first;
//! `CR_REPLAY_RUNS` (default 3) runs of each, alternating.
//!
//! Run: `cargo bench -p composable-rust-sqlite --bench replay`.

#![allow(missing_docs, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::Instant;

use composable_rust_core::{EventStore, ReadModelStore};
use composable_rust_sqlite::SqliteEventStore;
use composable_rust_testing::replay::{projection_rate, report, seed, setting};
use sqlx::Row;

/// Events per second of the raw floor: the same page query the store runs, every column read.
async fn raw_rate(pool: &sqlx::SqlitePool) -> f64 {
    let started = Instant::now();
    let (mut after, mut n) = (0i64, 0usize);
    loop {
        let rows = sqlx::query(
            "SELECT global_position, stream_id, stream_version, event_id, event_type, payload, metadata FROM events \
             WHERE global_position > ? ORDER BY global_position LIMIT 1000",
        )
        .bind(after)
        .fetch_all(pool)
        .await
        .expect("select");
        let Some(last) = rows.last() else { break };
        after = last.get::<i64, _>(0);
        for r in &rows {
            let _: (i64, String, i64, Vec<u8>, String, Vec<u8>, String) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
        }
        n += rows.len();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let (events, runs) = (setting("CR_REPLAY_EVENTS", 1_000_000), setting("CR_REPLAY_RUNS", 3));
    let path = std::env::temp_dir().join(format!("cr-replay-{}.db", std::process::id()));
    let store = Arc::new(SqliteEventStore::open(&path).await.expect("open"));
    println!("seeded {events} events in {:.1} s", seed(&*store, "bench", events).await);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display())).await.expect("raw pool");
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        floor.push(raw_rate(&pool).await);
        ours.push(projection_rate(store.clone() as Arc<dyn EventStore>, store.clone() as Arc<dyn ReadModelStore>).await);
    }
    report("SQLite", events, &ours, &floor);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
