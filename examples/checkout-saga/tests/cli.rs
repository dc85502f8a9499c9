//! The binary, end to end: every checkout reaches its expected final state.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_checkout-saga")).args(args).output().expect("run checkout-saga");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_thousand_orders_with_declines_and_out_of_stock_all_finish() {
    let (ok, stdout, stderr) = run(&["--orders", "1000", "--decline-every", "7", "--out-of-stock-every", "11", "--json"]);
    assert!(ok, "exit status not 0\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    // 1000 orders: every 11th is out of stock (90), every 7th of the rest is declined (143 - 13 = 130).
    assert_eq!(report["orders"], 1000);
    assert_eq!(report["cancelled_out_of_stock"], 90);
    assert_eq!(report["cancelled_payment_declined"], 130);
    assert_eq!(report["confirmed"], 780);
    assert_eq!(report["cancelled"], 220);
    assert!(report["events_published"].as_u64().unwrap() > 3000);
    assert!(report["events_persisted"].as_u64().unwrap() > report["events_published"].as_u64().unwrap(), "saga steps are persisted too");
    assert!(report["elapsed_ms"].is_u64());
    if std::path::Path::new("/proc/self/status").exists() {
        let (rss, peak) = (report["rss_kib"].as_u64().expect("rss_kib"), report["peak_rss_kib"].as_u64().expect("peak_rss_kib"));
        assert!(rss > 0 && peak >= rss, "the resident set ({rss} KiB) is within its peak ({peak} KiB)");
    }
    assert_eq!(report["problems"], serde_json::json!([]));
}

#[test]
fn the_default_run_prints_a_summary() {
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("300 orders"), "{stdout}");
    assert!(stdout.contains("every checkout reached its expected final state"), "{stdout}");
}

#[test]
fn an_unsupported_backend_is_a_clear_error() {
    let (ok, _, stderr) = run(&["--store", "mysql://localhost/db"]);
    assert!(!ok);
    assert!(stderr.contains("unsupported --store"), "{stderr}");
    assert!(stderr.contains("use one of memory:, sqlite:, postgres:, postgresql:"), "the known schemes are listed: {stderr}");
}

#[test]
#[cfg_attr(not(feature = "nats"), ignore = "needs --features nats")]
fn the_same_scenario_runs_over_nats_jetstream() {
    let Ok(url) = std::env::var("NATS_URL") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but NATS_URL is not set (scripts/test.sh starts nats-server and sets it)");
        eprintln!("skipping: NATS_URL not set");
        return;
    };
    let (ok, stdout, stderr) = run(&["--bus", &url, "--orders", "300", "--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["orders"], 300);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["events_published"].as_u64(), Some(1212 + report["skus_stocked"].as_u64().unwrap()), "every domain event published once");
}

#[test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
fn a_sqlite_store_keeps_state_across_runs() {
    let path = std::env::temp_dir().join(format!("checkout-{}.db", std::process::id()));
    let url = format!("sqlite:{}", path.display());
    for attempt in 1..=2 {
        let (ok, stdout, stderr) = run(&["--store", &url, "--orders", "60", "--json"]);
        assert!(ok, "run {attempt}: {stdout}\n{stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_eq!(report["problems"], serde_json::json!([]), "run {attempt}");
        assert!(report["events_persisted"].as_u64().unwrap() > 0);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
#[cfg_attr(not(feature = "postgres"), ignore = "needs --features postgres")]
fn the_same_scenario_runs_on_postgresql() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but DATABASE_URL is not set (scripts/test.sh starts PostgreSQL and sets it)");
        eprintln!("skipping: DATABASE_URL not set");
        return;
    };
    let (ok, stdout, stderr) = run(&["--store", &url, "--orders", "200", "--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["orders"], 200);
}

#[test]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
fn the_same_scenario_runs_on_embedded_zenoh() {
    let (ok, stdout, stderr) = run(&["--bus", "zenoh", "--orders", "300", "--json"]);
    assert!(ok, "exit status not 0\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["orders"], 300);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert!(report["events_published"].as_u64().unwrap() > 1000);
}

#[test]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
fn a_zenoh_peer_in_another_process_sees_the_run() {
    use composable_rust::SubscribeOptions;
    use futures::StreamExt;
    use std::collections::HashSet;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let observer = runtime.block_on(composable_rust::bus::connect(&format!("zenoh:peer?listen={endpoint}"))).expect("observer peer");
    let mut orders = runtime.block_on(observer.subscribe_with(&["events/order.events/**"], SubscribeOptions::exclusive())).unwrap();

    let (ok, stdout, stderr) = run(&["--bus", "zenoh", "--connect", &endpoint, "--orders", "50", "--json"]);
    assert!(ok, "exit status not 0\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["problems"], serde_json::json!([]));

    // Every order ends with a confirmation or a cancellation, published well after the peers met.
    let finished: HashSet<String> = runtime.block_on(async {
        let mut finished = HashSet::new();
        while finished.len() < 50 {
            let item = tokio::time::timeout(std::time::Duration::from_secs(10), orders.next()).await;
            let d = item.expect("the observer stopped receiving").expect("stream ended").expect("a delivery");
            if matches!(d.event().event_type.as_str(), "OrderConfirmed.v1" | "OrderCancelled.v1") {
                finished.insert(d.event().stream_id.as_ref().unwrap().to_string());
            }
        }
        finished
    });
    assert_eq!(finished.len(), 50);
}

#[test]
fn zenoh_endpoints_are_refused_for_other_buses_and_checked() {
    let (ok, _, stderr) = run(&["--bus", "memory", "--connect", "tcp/127.0.0.1:1"]);
    assert!(!ok);
    assert!(stderr.contains("apply to --bus zenoh only"), "{stderr}");
    let (ok, _, stderr) = run(&["--bus", "zenoh", "--connect", "127.0.0.1:7447"]);
    assert!(!ok);
    if cfg!(feature = "zenoh") {
        assert!(stderr.contains("invalid Zenoh endpoint"), "{stderr}");
    } else {
        assert!(stderr.contains("--features zenoh"), "a build without Zenoh says how to get it: {stderr}");
    }
}

#[test]
fn a_dual_bus_url_runs_the_scenario_over_two_buses() {
    let (ok, stdout, stderr) = run(&["--bus", "dual:memory|memory|dual-read-secondary", "--orders", "100", "--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["orders"], 100);
}

#[test]
fn a_malformed_bus_url_is_a_clear_error() {
    let (ok, _, stderr) = run(&["--bus", "memory:?capacity=lots"]);
    assert!(!ok);
    assert!(stderr.contains("unsupported --bus: malformed event bus URL") && stderr.contains("\"capacity=lots\""), "{stderr}");
}

/// `redpanda://KAFKA_BROKERS`, with `KAFKA_CLIENT_PROPERTIES` (`k=v,k=v`; the tansu workaround
/// scripts/test.sh sets) as the URL's query.
fn kafka_bus_url() -> Option<String> {
    let Ok(brokers) = std::env::var("KAFKA_BROKERS") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but KAFKA_BROKERS is not set (scripts/test.sh starts tansu and sets it)");
        eprintln!("skipping: KAFKA_BROKERS not set");
        return None;
    };
    let properties = std::env::var("KAFKA_CLIENT_PROPERTIES").unwrap_or_default().replace(',', "&");
    Some(if properties.is_empty() { format!("redpanda://{brokers}") } else { format!("redpanda://{brokers}?{properties}") })
}

fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

#[test]
#[cfg_attr(not(feature = "redpanda"), ignore = "needs --features redpanda")]
fn the_same_scenario_runs_over_redpanda_kafka() {
    let Some(bus) = kafka_bus_url() else { return };
    let ns = namespace();
    let (ok, stdout, stderr) = run(&["--bus", &bus, "--namespace", &ns, "--orders", "300", "--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["orders"], 300);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["events_published"].as_u64(), Some(1212 + report["skus_stocked"].as_u64().unwrap()), "every domain event published once");
    assert_eq!(report["saga_steps"].as_u64(), Some(1212), "every published event the saga handles applied once");
}

#[test]
#[cfg_attr(not(all(feature = "redpanda", feature = "sqlite", feature = "postgres")), ignore = "needs --features redpanda,sqlite,postgres")]
fn two_saga_worker_processes_share_one_kafka_consumer_group() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let Some(bus) = kafka_bus_url() else { return };
    let sqlite = std::env::temp_dir().join(format!("checkout-workers-{}.db", std::process::id()));
    let store = std::env::var("DATABASE_URL").unwrap_or_else(|_| format!("sqlite:{}", sqlite.display()));
    let ns = namespace();
    let common = ["--bus", &bus, "--store", &store, "--namespace", &ns];
    let mut workers: Vec<std::process::Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_checkout-saga"))
                .args(common)
                .args(["--role", "worker", "--workers", "1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a worker process")
        })
        .collect();
    // Drained as the workers run: a full stderr pipe would block a worker mid-run.
    let stderr_readers: Vec<std::thread::JoinHandle<String>> = workers
        .iter_mut()
        .map(|w| {
            let mut err = w.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                text
            })
        })
        .collect();
    let mut outputs = Vec::new();
    for w in &mut workers {
        let mut out = BufReader::new(w.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("worker output");
        if line.trim() != "ready" {
            let _ = w.wait();
            panic!("a worker must subscribe before the driver starts; it said {line:?}, stderr: {:?}", w.stderr);
        }
        outputs.push(out);
    }

    let (ok, stdout, stderr) = run(&[&common[..], &["--role", "driver", "--orders", "120", "--json"]].concat());
    // Closing stdin asks each worker to stop and print what it did.
    let reports: Vec<serde_json::Value> = workers
        .iter_mut()
        .zip(outputs)
        .map(|(w, mut out)| {
            drop(w.stdin.take());
            let mut rest = String::new();
            out.read_to_string(&mut rest).unwrap();
            assert!(w.wait().unwrap().success(), "worker failed: {rest}");
            serde_json::from_str(rest.trim()).expect("worker JSON report")
        })
        .collect();
    let worker_logs: Vec<String> = stderr_readers.into_iter().map(|h| h.join().unwrap()).collect();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sqlite.display()));
    }
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(
        report["problems"],
        serde_json::json!([]),
        "every checkout reached its expected final state, stock balances; workers {reports:?}, their logs {worker_logs:#?}"
    );
    let steps: Vec<u64> = reports.iter().map(|r| r["saga_steps"].as_u64().unwrap()).collect();
    assert!(steps.iter().all(|s| *s > 0), "both worker processes must have taken part: {steps:?}");
    let published = report["events_published"].as_u64().unwrap() + reports.iter().map(|r| r["events_published"].as_u64().unwrap()).sum::<u64>();
    // At-least-once: an event can be published twice (each process's outbox relay may republish
    // another's in-flight publish) and redelivered on a rebalance; the saga applies it once and
    // recognises the rest. The driver's checks above prove the effects happened exactly once. Every
    // applied step came from a publish; the saga ignores the restocks (one StockAdded per SKU). No
    // upper bound: a duplicate published near the end (a relay republishing an entry another process
    // was still marking) may reach the group after the workers were told to stop.
    let applied = steps.iter().sum::<u64>();
    let recognised: u64 = reports.iter().map(|r| r["saga_duplicates"].as_u64().unwrap()).sum();
    let ignored = report["skus_stocked"].as_u64().unwrap();
    assert!(applied + ignored <= published, "applied {applied}, recognised {recognised}, ignored {ignored}, published {published}: {reports:?}");
    assert!(reports.iter().all(|r| r["dead_letters"] == 0), "{reports:?}");
}

/// `--duplicate-deliveries 0.2 --transient-failures 0.05` over 2,000 orders: the invariants hold.
fn faulty_run(extra: &[&str]) {
    let args = [&["--orders", "2000", "--duplicate-deliveries", "0.2", "--transient-failures", "0.05", "--timeout-secs", "300", "--json"], extra].concat();
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "exit status not 0 for {args:?}\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["problems"], serde_json::json!([]), "{args:?}");
    assert_eq!(report["double_charges"], 0, "no order charged twice");
    assert_eq!(report["stock_balanced"], true);
    assert_eq!(report["all_final"], true, "every order final");
    assert_eq!(report["duplicate_events"], 0, "no decision stored twice");
    assert_eq!(report["outbox_pending"], 0, "outbox drained");
    assert!(report["injected_duplicates"].as_u64().unwrap() > 100, "faults were injected: {report}");
    assert!(report["injected_failures"].as_u64().unwrap() > 100, "faults were injected: {report}");
}

#[test]
fn faults_on_the_in_memory_backends_keep_every_invariant() {
    faulty_run(&[]);
}

#[test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
fn faults_on_sqlite_keep_every_invariant() {
    let path = std::env::temp_dir().join(format!("checkout-faults-{}.db", std::process::id()));
    // The bus feed: the injected redeliveries are the bus's.
    faulty_run(&["--store", &format!("sqlite:{}", path.display()), "--saga-feed", "bus"]);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
fn faults_on_embedded_zenoh_keep_every_invariant() {
    faulty_run(&["--bus", "zenoh"]);
}

#[test]
#[cfg_attr(not(feature = "nats"), ignore = "needs --features nats")]
fn faults_over_nats_keep_every_invariant() {
    let Ok(url) = std::env::var("NATS_URL") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but NATS_URL is not set (scripts/test.sh starts nats-server and sets it)");
        eprintln!("skipping: NATS_URL not set");
        return;
    };
    faulty_run(&["--bus", &url, "--namespace", &namespace()]);
}

#[test]
#[cfg_attr(not(feature = "redpanda"), ignore = "needs --features redpanda")]
fn faults_over_kafka_keep_every_invariant() {
    let Some(bus) = kafka_bus_url() else { return };
    faulty_run(&["--bus", &bus, "--namespace", &namespace()]);
}

/// `--orders 1000 --slow-payments-every 10 --payment-timeout-ms 500`: the 100 orders whose payment
/// never answers are cancelled by their payment deadline, the others finish as planned, stock balances.
fn slow_payments_run(extra: &[&str]) {
    let args = [&["--orders", "1000", "--slow-payments-every", "10", "--payment-timeout-ms", "500", "--timeout-secs", "300", "--json"], extra].concat();
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "exit status not 0 for {args:?}\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["problems"], serde_json::json!([]), "{args:?}");
    assert_eq!(report["timed_out"], 100, "every slow order, and only those, timed out: {report}");
    // A deadline may also fire for an order whose capture the saga has not seen yet (a backlog):
    // the void finds it captured and the order confirms, so only the slow ones time out.
    assert!(report["deadlines_fired"].as_u64().unwrap() >= 100, "{report}");
    assert_eq!(report["stock_balanced"], true);
    assert_eq!(report["all_final"], true);
    assert_eq!(report["confirmed"].as_u64().unwrap() + report["cancelled"].as_u64().unwrap(), 1000, "{report}");
}

#[test]
fn slow_payments_time_out_on_the_in_memory_backends() {
    slow_payments_run(&[]);
}

#[test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
fn slow_payments_time_out_on_sqlite() {
    let path = std::env::temp_dir().join(format!("checkout-slow-{}.db", std::process::id()));
    slow_payments_run(&["--store", &format!("sqlite:{}", path.display())]);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
#[cfg_attr(not(feature = "postgres"), ignore = "needs --features postgres")]
fn slow_payments_time_out_on_postgresql() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but DATABASE_URL is not set (scripts/test.sh starts PostgreSQL and sets it)");
        eprintln!("skipping: DATABASE_URL not set");
        return;
    };
    slow_payments_run(&["--store", &url]);
}

/// `--crash-after`: a run on the embedded defaults (SQLite store, in-memory bus) aborts mid-run; the
/// next run over the same file finishes every order of the first (its saga workers are fed by the
/// store from their checkpoint), and a rebuild of the order summary gives the same read model.
#[test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
fn a_run_that_aborts_mid_way_is_finished_by_the_next_run_over_the_same_sqlite_file() {
    let path = std::env::temp_dir().join(format!("checkout-crash-{}.db", std::process::id()));
    let url = format!("sqlite:{}", path.display());
    let (ok, stdout, _) = run(&["--store", &url, "--orders", "400", "--crash-after", "150", "--json"]);
    assert!(!ok && stdout.is_empty(), "the first run aborted before reporting: {stdout}");
    let (ok, stdout, stderr) = run(&["--store", &url, "--orders", "40", "--await-all-orders", "--timeout-secs", "300", "--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let second: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(second["problems"], serde_json::json!([]));
    let statuses = second["projection"]["orders_by_status"].as_object().expect("orders by status").clone();
    assert!(!statuses.contains_key("placed"), "every order of both runs is final: {statuses:?}");
    let total: i64 = statuses.values().map(|v| v.as_i64().unwrap()).sum();
    assert!(total >= 150 + 40, "the first run's orders are counted: {statuses:?}");
    let (ok, stdout, stderr) = run(&["--store", &url, "--rebuild-projections", "--orders", "0", "--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let rebuilt: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for field in ["orders_by_status", "revenue_cents", "stock"] {
        assert_eq!(rebuilt["projection"][field], second["projection"][field], "{field}: the rebuilt read model equals the live one");
    }
    assert!(rebuilt["applied"].as_u64().unwrap() > 0);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
