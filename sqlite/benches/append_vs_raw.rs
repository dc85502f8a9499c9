//! Single-event appends to distinct streams, 1 and 32 concurrent writers, against raw sqlx inserts
//! of the same rows in the same run, on files with the store's settings (WAL, `synchronous = FULL`):
//!
//! - **group off**: the store with `with_max_group(1)`, one transaction per append, as before group
//!   commit;
//! - **group commit**: the store as it is opened by default (groups of up to 64 writes);
//! - **raw**: one sqlx connection inserting the same rows (the event row and the stream's version
//!   row, one `INSERT` each) in one transaction per group of the size the store formed on average
//!   (1 for one writer);
//! - **raw multi-row**: the same rows and transactions, each table written by one multi-row `INSERT`
//!   (what group commit itself does), for reference.
//!
//! Each line is measured `CR_APPEND_ROUNDS` times (default 3), the four kinds taking turns, for
//! `CR_APPEND_SECS` seconds (default 2) each time; the table shows the median of each and the ratios
//! of the medians (the machine's fsync time moves with what else runs on it). `CR_APPEND_WRITERS`
//! (default `1,32`) lists the writer counts; `CR_APPEND_DIR` (default the temporary directory) where
//! the files go (a tmpfs such as `/dev/shm` takes the disk out: what is left is the CPU cost).
//! Run: `cargo bench -p composable-rust-sqlite --bench append_vs_raw`.

#![allow(missing_docs, clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use composable_rust_core::{AppendRequest, EventStore, ExpectedVersion, SerializedEvent, StreamId, Version};
use composable_rust_sqlite::{SqliteConfig, SqliteEventStore};
use composable_rust_testing::bench_results::{BenchLine, record};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

fn event() -> SerializedEvent {
    SerializedEvent::new("Bench.v1", vec![7u8; 64], None)
}

/// A database file of its own for one line, removed with its WAL files when dropped.
struct Db(PathBuf);

impl Db {
    fn new(name: &str) -> Self {
        let dir = std::env::var_os("CR_APPEND_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        Self(dir.join(format!("cr-append-{}-{name}.db", std::process::id())))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// Appends per second of `writers` tasks, each appending one event at a time to its own stream for
/// `secs`; with the average group size the store formed (1 when group commit is off).
async fn store_rate(path: &Path, max_group: usize, writers: usize, secs: Duration) -> (f64, f64) {
    let store = Arc::new(SqliteEventStore::connect_with(SqliteConfig::new(path).with_max_group(max_group)).await.expect("open"));
    let before = store.group_commit_stats();
    let started = Instant::now();
    let end = started + secs;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let stream = StreamId::new(format!("writer-{w}")).expect("stream id");
                let mut version = Version(0);
                let mut appended = 0_u64;
                while Instant::now() < end {
                    let request = AppendRequest::new(stream.clone(), ExpectedVersion::from_loaded(version), vec![event()]);
                    version = store.append(request).await.expect("append").next_expected_version;
                    appended += 1;
                }
                appended
            })
        })
        .collect();
    let mut appended = 0;
    for task in tasks {
        appended += task.await.expect("writer");
    }
    let rate = appended as f64 / started.elapsed().as_secs_f64();
    let stats = store.group_commit_stats();
    let transactions = stats.transactions - before.transactions;
    let group = if transactions == 0 { 1.0 } else { (stats.appends - before.appends) as f64 / transactions as f64 };
    (rate, group)
}

/// Rows per second of raw inserts: `group` rows (event row + stream row, round robin over
/// `streams` streams) per transaction, one statement per row and table, or one multi-row statement
/// per table (`multi_row`).
async fn raw_rate(path: &Path, streams: usize, group: usize, multi_row: bool, secs: Duration) -> f64 {
    // The store's schema, then a raw connection with the store's settings.
    drop(SqliteEventStore::open(path).await.expect("schema"));
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await
        .expect("raw connection");
    let names: Vec<String> = (0..streams).map(|w| format!("writer-{w}")).collect();
    let mut versions = vec![0_i64; streams];
    let (event_sql, stream_sql) = if multi_row {
        (
            format!(
                "INSERT INTO events (stream_id, stream_version, event_id, event_type, payload, metadata) VALUES {}",
                vec!["(?, ?, ?, ?, ?, ?)"; group].join(", ")
            ),
            format!(
                "INSERT INTO streams (stream_id, version) VALUES {} ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
                vec!["(?, ?)"; group].join(", ")
            ),
        )
    } else {
        (
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, payload, metadata) VALUES (?, ?, ?, ?, ?, ?)".to_owned(),
            "INSERT INTO streams (stream_id, version) VALUES (?, ?) ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version".to_owned(),
        )
    };
    let (mut next, mut rows) = (0_usize, 0_u64);
    let started = Instant::now();
    while started.elapsed() < secs {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.expect("begin");
        let batch: Vec<(usize, SerializedEvent, String)> = (0..group)
            .map(|_| {
                let w = next % streams;
                next += 1;
                versions[w] += 1;
                let e = event();
                let metadata = serde_json::to_string(&e.metadata).expect("metadata");
                (w, e, metadata)
            })
            .collect();
        if multi_row {
            let mut q = sqlx::query(&event_sql);
            for (w, e, metadata) in &batch {
                q = q
                    .bind(names[*w].as_str())
                    .bind(versions[*w])
                    .bind(&e.event_id.as_bytes()[..])
                    .bind(e.event_type.as_str())
                    .bind(&e.data[..])
                    .bind(metadata.as_str());
            }
            q.execute(&mut *tx).await.expect("insert events");
            let mut q = sqlx::query(&stream_sql);
            for (w, _, _) in &batch {
                q = q.bind(names[*w].as_str()).bind(versions[*w]);
            }
            q.execute(&mut *tx).await.expect("upsert streams");
        } else {
            for (w, e, metadata) in &batch {
                sqlx::query(&event_sql)
                    .bind(names[*w].as_str())
                    .bind(versions[*w])
                    .bind(&e.event_id.as_bytes()[..])
                    .bind(e.event_type.as_str())
                    .bind(&e.data[..])
                    .bind(metadata.as_str())
                    .execute(&mut *tx)
                    .await
                    .expect("insert event");
                sqlx::query(&stream_sql).bind(names[*w].as_str()).bind(versions[*w]).execute(&mut *tx).await.expect("upsert stream");
            }
        }
        tx.commit().await.expect("commit");
        rows += group as u64;
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

/// Single-row insert transactions per second of `connections` tasks, each with its own connection
/// (`BEGIN IMMEDIATE`, one 64-byte `INSERT`, `COMMIT`): the raw floor of a workload with that
/// concurrency (SQLite writes one transaction at a time; the others wait on its lock).
async fn floor_rate(path: &Path, connections: usize, secs: Duration) -> f64 {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));
    let mut setup = options.connect().await.expect("open");
    sqlx::query("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)").execute(&mut setup).await.expect("create");
    setup.close().await.expect("close");
    let started = Instant::now();
    let end = started + secs;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let options = options.clone();
            tokio::spawn(async move {
                let mut conn = options.connect().await.expect("open");
                let mut done = 0u64;
                while Instant::now() < end {
                    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.expect("begin");
                    sqlx::query("INSERT INTO floor (payload) VALUES (?)").bind(&[7u8; 64][..]).execute(&mut conn).await.expect("insert");
                    sqlx::query("COMMIT").execute(&mut conn).await.expect("commit");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn k(rate: f64) -> String {
    format!("{:.1} K/s", rate / 1000.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let secs = Duration::from_secs(setting("CR_APPEND_SECS", 2));
    let rounds = setting("CR_APPEND_ROUNDS", 3).max(1);
    let writers: Vec<usize> =
        std::env::var("CR_APPEND_WRITERS").unwrap_or_else(|_| "1,32".into()).split(',').filter_map(|w| w.trim().parse().ok()).filter(|w| *w > 0).collect();
    println!("single-event appends to distinct streams, WAL + synchronous=FULL, medians of {rounds} rounds of {} s per kind", secs.as_secs());
    println!(
        "| writers | group off (max_group 1) | group commit | avg group | raw, per-row inserts | raw, multi-row inserts | commit / off | commit / raw | commit / multi-row |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &w in &writers {
        let (mut offs, mut ons, mut groups, mut raws, mut multis) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            offs.push(store_rate(&Db::new(&format!("off-{w}-{round}")).0, 1, w, secs).await.0);
            let (on, group) = store_rate(&Db::new(&format!("on-{w}-{round}")).0, 64, w, secs).await;
            let size = (group.round() as usize).max(1);
            raws.push(raw_rate(&Db::new(&format!("raw-{w}-{round}")).0, w, size, false, secs).await);
            multis.push(raw_rate(&Db::new(&format!("multi-{w}-{round}")).0, w, size, true, secs).await);
            ons.push(on);
            groups.push(group);
            eprintln!(
                "  {w} writers, round {}: off {}, commit {} (groups of {group:.1}), raw {}, multi-row {}",
                round + 1,
                k(offs[offs.len() - 1]),
                k(on),
                k(raws[raws.len() - 1]),
                k(multis[multis.len() - 1])
            );
        }
        let (off, on, group, raw, multi) = (median(offs), median(ons), median(groups), median(raws), median(multis));
        println!("| {w} | {} | {} | {group:.1} | {} | {} | {:.2} | **{:.2}** | {:.2} |", k(off), k(on), k(raw), k(multi), on / off, on / raw, on / multi);
        let case = format!("{w} writers");
        record(&BenchLine { bench: "sqlite_append", case: &case, ours: on, raw: Some(raw), unit: "events/s" });
        record(&BenchLine { bench: "sqlite_append_multi_row", case: &case, ours: on, raw: Some(multi), unit: "events/s" });
        record(&BenchLine { bench: "sqlite_append_before_group_commit", case: &case, ours: on, raw: Some(off), unit: "events/s" });
    }
    // The checkout saga's floor: single-row insert transactions at its concurrency (16).
    let floors: Vec<f64> = {
        let mut v = Vec::new();
        for round in 0..rounds {
            v.push(floor_rate(&Db::new(&format!("floor-{round}")).0, 16, secs).await);
        }
        v
    };
    let floor = median(floors);
    println!("raw single-row insert transactions, 16 connections: {}", k(floor));
    record(&BenchLine { bench: "floor", case: "sqlite, 16 connections", ours: floor, raw: Some(floor), unit: "tx/s" });
}
