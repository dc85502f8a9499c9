//! Append throughput of `PostgresEventStore` against `pgbench` inserting one row per transaction on
//! the same server, in the same run. Uses `DATABASE_URL`, or starts a throwaway PostgreSQL with
//! `scripts/services/postgres.sh`. Each measurement runs for `CR_BENCH_SECS` seconds (default 5);
//! `CR_BENCH_GROUP_STATEMENTS` overrides `PostgresConfig::group_statements_in_flight` for tuning.
//! The 32-writer line is measured with group commit on (the default) and off.
//!
//! Run: `cargo bench -p composable-rust-postgres`.

#![allow(missing_docs, clippy::cast_precision_loss)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use composable_rust_core::{AppendRequest, EventStore, ExpectedVersion, SerializedEvent, StreamId};
use composable_rust_postgres::{PostgresConfig, PostgresEventStore};
use composable_rust_testing::bench_results::{BenchLine, record};

fn seconds() -> u64 {
    std::env::var("CR_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

fn pg_bin() -> String {
    let out = Command::new("bash").args(["-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"]).output().expect("find PostgreSQL binaries");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// pgbench's transactions per second for a one-row insert with `clients` clients.
fn pgbench(url: &str, clients: u32) -> f64 {
    let script = std::env::temp_dir().join("cr_pgbench_insert.sql");
    std::fs::write(&script, format!("INSERT INTO bench_insert (stream_id, payload) VALUES ('s', '\\x{}'::bytea);\n", "07".repeat(64))).unwrap();
    let out = Command::new(format!("{}/pgbench", pg_bin()))
        .args(["-n", "-M", "prepared", "-f"])
        .arg(&script)
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &seconds().to_string(), url])
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// Events per second appended by `writers` tasks, `batch` events per append, each to a new stream.
async fn ours(store: &Arc<PostgresEventStore>, writers: u32, batch: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let events = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, events) = (Arc::clone(store), Arc::clone(&events));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let stream = StreamId::new(format!("bench-{}", uuid::Uuid::new_v4().simple())).unwrap();
                    let batch_events: Vec<_> = (0..batch).map(|_| SerializedEvent::new("Bench.v1", vec![7u8; 64], None)).collect();
                    store.append(AppendRequest::new(stream, ExpectedVersion::NoStream, batch_events)).await.expect("append");
                    events.fetch_add(batch as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    events.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there is nothing to list for this harness.
    }
    let mut own_server = None;
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        let dir = std::env::temp_dir().join(format!("cr-pgbench-{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services/postgres.sh");
        let out = Command::new("bash").arg(script).arg("start").arg(&dir).output().expect("start PostgreSQL");
        assert!(out.status.success(), "could not start PostgreSQL: {}", String::from_utf8_lossy(&out.stderr));
        own_server = Some((script, dir));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut config = PostgresConfig::new(&url);
        config = config.with_max_connections(40);
        if let Some(n) = std::env::var("CR_BENCH_GROUP_STATEMENTS").ok().and_then(|v| v.parse().ok()) {
            config = config.with_group_statements_in_flight(n);
        }
        let store = Arc::new(PostgresEventStore::connect_with(config.clone()).await.expect("connect"));
        config = config.with_max_appends_per_statement(1);
        let store_alone = Arc::new(PostgresEventStore::connect_with(config).await.expect("connect"));
        store.migrate().await.expect("migrate");
        sqlx::query("CREATE TABLE IF NOT EXISTS bench_insert (id BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL, payload BYTEA NOT NULL)")
            .execute(store.raw_pool())
            .await
            .unwrap();

        println!("PostgreSQL append throughput, {} s per line, 64-byte events, same server, same run", seconds());
        let pg1 = pgbench(&url, 1);
        let ours1 = ours(&store, 1, 1).await;
        println!("1 writer,  1 event/append:  composable-rust {ours1:>9.0} events/s | pgbench 1 client  {pg1:>9.0} tps | ratio {:.2}", ours1 / pg1);
        let pg32 = pgbench(&url, 32);
        let ours32 = ours(&store, 32, 1).await;
        let stats = store.group_commit_stats();
        let alone32 = ours(&store_alone, 32, 1).await;
        println!("32 writers, 1 event/append: composable-rust {ours32:>9.0} events/s | pgbench 32 clients {pg32:>9.0} tps | ratio {:.2}", ours32 / pg32);
        println!(
            "  (group commit: {:.1} appends per statement; with it off: {alone32:.0} events/s, ratio {:.2})",
            stats.grouped_appends as f64 / stats.group_statements.max(1) as f64,
            alone32 / pg32
        );
        let batch1 = ours(&store, 1, 100).await;
        println!("1 writer,  100 events/append: composable-rust {batch1:>9.0} events/s");
        let batch8 = ours(&store, 8, 100).await;
        println!("8 writers, 100 events/append: composable-rust {batch8:>9.0} events/s");
        // The checkout saga's floor: single-row insert transactions at its concurrency (16).
        let pg16 = pgbench(&url, 16);
        println!("pgbench 16 clients (the saga's concurrency): {pg16:>9.0} tps");
        for (case, ours, raw) in [
            ("1 writer", ours1, Some(pg1)),
            ("32 writers", ours32, Some(pg32)),
            ("32 writers, group commit off", alone32, Some(pg32)),
            ("1 writer, 100 events per append", batch1, None),
            ("8 writers, 100 events per append", batch8, None),
        ] {
            record(&BenchLine { bench: "postgres_append", case, ours, raw, unit: "events/s" });
        }
        record(&BenchLine { bench: "floor", case: "postgres, 16 clients", ours: pg16, raw: Some(pg16), unit: "tx/s" });
    });
    if let Some((script, dir)) = own_server {
        let _ = Command::new("bash").arg(script).arg("stop").arg(&dir).output();
        let _ = std::fs::remove_dir_all(dir);
    }
}
