//! Replaying the log through a no-op projection (`ProjectionRunner::catch_up`, 1,000 events per
//! batch, one checkpoint commit each) against a raw paged `SELECT` of the same rows and columns, in
//! the same run, on the same server. Needs `DATABASE_URL`; uses a database of its own
//! (`cr_replay_bench`, dropped first). `CR_REPLAY_EVENTS` events (default 1,000,000) are appended
//! first; `CR_REPLAY_RUNS` (default 3) runs of each, alternating.
//!
//! Run: `DATABASE_URL=postgres://... cargo bench -p composable-rust-postgres --bench replay`.

#![allow(missing_docs, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::Instant;

use composable_rust_core::{EventStore, ReadModelStore};
use composable_rust_postgres::PostgresEventStore;
use composable_rust_testing::replay::{projection_rate, report, seed, setting};
use sqlx::Row;

/// Events per second of the raw floor: the same page query the store runs, every column read.
async fn raw_rate(pool: &sqlx::PgPool) -> f64 {
    let started = Instant::now();
    let (mut after, mut n) = (0i64, 0usize);
    loop {
        let rows = sqlx::query(
            "SELECT global_position, stream_id, stream_version, event_id::text, event_type, payload, metadata::text FROM composable_rust.events \
             WHERE global_position > $1 ORDER BY global_position LIMIT 1000",
        )
        .bind(after)
        .fetch_all(pool)
        .await
        .expect("select");
        let Some(last) = rows.last() else { break };
        after = last.get::<i64, _>(0);
        for r in &rows {
            let _: (i64, String, i64, String, String, Vec<u8>, String) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
        }
        n += rows.len();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("skipping: set DATABASE_URL (scripts/services/postgres.sh starts a server)");
        return;
    };
    let (events, runs) = (setting("CR_REPLAY_EVENTS", 1_000_000), setting("CR_REPLAY_RUNS", 3));
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query("DROP DATABASE IF EXISTS cr_replay_bench").execute(&admin).await.expect("drop");
    sqlx::query("CREATE DATABASE cr_replay_bench").execute(&admin).await.expect("create");
    let (base, _) = url.rsplit_once('/').expect("a database in the URL");
    let bench_url = format!("{base}/cr_replay_bench");
    let store = Arc::new(PostgresEventStore::connect(&bench_url).await.expect("store"));
    store.migrate().await.expect("migrate");
    println!("seeded {events} events in {:.1} s", seed(&*store, "bench", events).await);
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        floor.push(raw_rate(store.raw_pool()).await);
        ours.push(projection_rate(store.clone() as Arc<dyn EventStore>, store.clone() as Arc<dyn ReadModelStore>).await);
    }
    report("PostgreSQL", events, &ours, &floor);
    drop(store);
    let _ = sqlx::query("DROP DATABASE IF EXISTS cr_replay_bench WITH (FORCE)").execute(&admin).await;
}
