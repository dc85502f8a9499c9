//! `checkout-saga --serve`: the live dashboard, as a user meets it.
//!
//! - A real headless Chromium (Debian's `chromium`; the test command installs it) opens the page
//!   while a paced run goes on; its counters (`placed`, `confirmed`, `cancelled`, `in-flight`),
//!   read through the DevTools protocol, reach the run's final numbers, and the per-order
//!   drill-down shows an order's events.
//! - `/metrics` scraped after a run holds counters equal to the run's JSON summary.
//! - `/health/ready` turns not ready, naming the store, when the PostgreSQL server behind the
//!   store is stopped (a server of the test's own, started with `scripts/services/postgres.sh`).
//!
//! Without `chromium` (or PostgreSQL for the last test) a test says so and passes, except under
//! `CI=true`, where a missing tool is a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Under CI a missing tool fails the test; elsewhere it is skipped with a note.
fn missing(what: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what} is missing, and CI=true: the test command installs it (scripts/test.sh)");
    eprintln!("skipping: {what} is missing (scripts/test.sh installs it)");
}

/// A `checkout-saga --serve` process: where it serves, its JSON report once the run is done, and
/// its standard input (closing it stops the server).
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: String,
    report: mpsc::Receiver<Value>,
    stderr: std::sync::Arc<parking_lot::Mutex<String>>,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_checkout-saga"))
            .args(["--serve", "127.0.0.1:0", "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn checkout-saga --serve");
        let stdin = child.stdin.take();
        let stderr = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("serving http://") {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
                log.lock().push_str(&(line + "\n"));
            }
        });
        let (report_tx, report) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = report_tx.send(v);
                }
            }
        });
        let Ok(addr) = addr_rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("checkout-saga never printed `serving http://ADDR`; stderr:\n{}", stderr.lock());
        };
        Self { child, stdin, addr, report, stderr }
    }

    /// The run's JSON report (the run is over; the server still serves).
    fn report(&self, within: Duration) -> Value {
        self.report.recv_timeout(within).unwrap_or_else(|_| panic!("no JSON report within {within:?}; stderr:\n{}", self.stderr.lock()))
    }

    /// Closes standard input: the server stops and the process exits; its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("checkout-saga kept serving 20 s after its standard input closed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A plain HTTP/1.1 GET: status and body (read to its `Content-Length`, or to the end: the
/// DevTools server keeps connections open).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).unwrap_or_else(|e| panic!("read GET {path}: {e}"));
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
            if n == 0 || length.is_some_and(|len| body.len() >= len) {
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line in {head:?}"));
                return (status, body.to_string());
            }
        }
        assert!(n > 0, "GET {path}: the connection closed before the response's head");
    }
}

/// The value of a Prometheus counter with exactly these labels, in any order (0 when absent).
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    let parse = |labels: &str| {
        let mut pairs: Vec<String> = labels.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect();
        pairs.sort();
        pairs
    };
    let wanted = parse(labels);
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .find_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            (parse(labels) == wanted).then(|| value.trim().parse().unwrap_or_else(|e| panic!("{name}{{{labels}}} = {value:?} is not a count: {e}")))
        })
        .unwrap_or(0)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("no {field} in the report: {report}"))
}

#[test]
fn metrics_scraped_after_a_run_equal_its_summary() {
    let served = Served::start(&["--orders", "120", "--decline-every", "7", "--out-of-stock-every", "11"]);
    let report = served.report(Duration::from_secs(120));
    assert!(report["problems"].as_array().is_some_and(Vec::is_empty), "the run had problems: {report}");
    let (status, text) = http_get(&served.addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(metric(&text, "composable_saga_steps_total", r#"outcome="applied",saga="checkout""#), count(&report, "saga_steps"), "saga steps\n{text}");
    assert_eq!(metric(&text, "composable_events_published_total", ""), count(&report, "events_published"), "events published\n{text}");
    assert_eq!(metric(&text, "composable_events_appended_total", ""), count(&report, "events_persisted"), "events appended\n{text}");
    assert_eq!(metric(&text, "composable_dead_letters_total", ""), count(&report, "dead_letters"), "dead letters\n{text}");
    // Every order was placed by one command to the Order aggregate, and every placed order ends
    // with one more (confirm or cancel): the handled Order commands are twice the orders.
    assert_eq!(
        metric(&text, "composable_commands_handled_total", r#"aggregate="order",outcome="handled""#),
        2 * count(&report, "orders"),
        "order commands handled\n{text}"
    );
    // Latencies are recorded too (the example turns the runtime's histograms on with a recorder).
    for histogram in ["composable_append_duration_seconds", "composable_publish_duration_seconds"] {
        assert!(metric(&text, &format!("{histogram}_count"), "") > 0, "{histogram} recorded\n{text}");
    }
    let (status, live) = http_get(&served.addr, "/health/live");
    assert_eq!((status, live.trim()), (200, "live"));
    let (status, ready) = http_get(&served.addr, "/health/ready");
    assert_eq!(status, 200, "ready after the run: {ready}");
    assert!(served.stop().success(), "the run passed its checks");
}

/// Chromium's binary: `$CHROMIUM`, or `chromium` / `chromium-browser` on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name))).find(|p| p.is_file())
}

/// A headless Chromium on `url`, with the DevTools protocol on a free port; killed on drop.
struct Browser {
    child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(binary: &PathBuf, url: &str) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args(["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0"])
            // Root (CI containers) cannot use Chromium's sandbox.
            .arg("--no-sandbox")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        let err = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
            }
        });
        let devtools = rx.recv_timeout(Duration::from_secs(60)).expect("chromium printed its DevTools address");
        Self { child, devtools, _profile: profile }
    }

    /// The DevTools WebSocket of the page showing `url`.
    fn page(&self, url: &str) -> String {
        let started = Instant::now();
        loop {
            let (_, body) = http_get(&self.devtools, "/json/list");
            let targets: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
            if let Some(ws) = targets.iter().find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))) {
                return ws["webSocketDebuggerUrl"].as_str().unwrap().to_string();
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no page for {url} among {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `expression` in the page (DevTools `Runtime.evaluate`) and returns its value.
async fn evaluate<S>(ws: &mut S, id: &mut u64, expression: &str) -> Value
where
    S: futures::Sink<Message> + futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    <S as futures::Sink<Message>>::Error: std::fmt::Debug,
{
    *id += 1;
    let call = serde_json::json!({"id": *id, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": true}});
    ws.send(Message::text(call.to_string())).await.expect("send to DevTools");
    while let Some(message) = ws.next().await {
        let Ok(Message::Text(text)) = message else { continue };
        let reply: Value = serde_json::from_str(&text).expect("DevTools answers JSON");
        if reply["id"] == *id {
            return reply["result"]["result"]["value"].clone();
        }
    }
    panic!("DevTools closed the connection");
}

const COUNTERS: &str =
    r#"JSON.stringify(Object.fromEntries(["placed","confirmed","cancelled","in-flight"].map(id => [id, Number(document.getElementById(id).textContent)])))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_headless_browser_counts_the_run_to_its_final_numbers() {
    let Some(binary) = chromium() else { return missing("chromium") };
    // Paced: the run lasts a few seconds, the page follows it live.
    let served = Served::start(&["--orders", "150", "--pace-ms", "20", "--decline-every", "7", "--out-of-stock-every", "11"]);
    let url = format!("http://{}/", served.addr);
    let browser = Browser::open(&binary, &url);
    let (mut ws, _) = tokio_tungstenite::connect_async(browser.page(&url)).await.expect("connect to the page's DevTools");
    let mut id = 0;

    let report = tokio::task::block_in_place(|| served.report(Duration::from_secs(120)));
    let expected = serde_json::json!({"placed": count(&report, "orders"), "confirmed": count(&report, "confirmed"), "cancelled": count(&report, "cancelled"), "in-flight": 0});
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let counters: Value = serde_json::from_str(evaluate(&mut ws, &mut id, COUNTERS).await.as_str().unwrap_or("{}")).unwrap_or_default();
        if counters == expected {
            break;
        }
        seen.push(counters);
        assert!(started.elapsed() < Duration::from_secs(60), "the page's counters never reached {expected}; last seen {:?}", seen.last());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(evaluate(&mut ws, &mut id, "document.getElementById('connection').textContent").await, "live");

    // Drill-down: clicking an order in the recent events lists that order's own events.
    let order = evaluate(&mut ws, &mut id, "(() => { const a = document.querySelector('#feed li a'); a.click(); return a.textContent; })()").await;
    let order = order.as_str().expect("an order in the recent events").to_string();
    let started = Instant::now();
    loop {
        let lines = evaluate(&mut ws, &mut id, "[...document.querySelectorAll('#order-events li')].map(li => li.textContent)").await;
        let lines: Vec<String> = serde_json::from_value(lines).unwrap_or_default();
        // The most recent order event is the end of an order: placed, then confirmed or cancelled.
        if lines.len() >= 2 {
            assert!(lines.iter().all(|l| l.contains(&order)), "only {order}'s events: {lines:?}");
            assert!(lines[0].contains("OrderPlaced.v1"), "from the order's first event: {lines:?}");
            // Each with its payload decoded to JSON by the example's decoder.
            assert!(lines[0].contains(r#"{"Placed":{"#), "the OrderPlaced payload as JSON: {lines:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the drill-down of {order} never listed its events: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(browser);
    assert!(tokio::task::block_in_place(|| served.stop()).success(), "the run passed its checks");
}

/// A PostgreSQL server of this test's own (so that stopping it disturbs no other test).
#[cfg(feature = "postgres")]
struct OwnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

#[cfg(feature = "postgres")]
impl OwnPostgres {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/postgres.sh")
    }

    fn start() -> Option<Self> {
        let dir = tempfile::Builder::new().prefix("cr-dash-pg").tempdir_in("/tmp").ok()?;
        let out = Command::new("bash").arg(Self::script()).arg("start").arg(dir.path()).stderr(Stdio::null()).output().ok()?;
        let url = String::from_utf8_lossy(&out.stdout).lines().last()?.trim().to_string();
        (out.status.success() && url.starts_with("postgres://")).then_some(Self { dir, url })
    }

    fn stop(&self) {
        let status = Command::new("bash").arg(Self::script()).arg("stop").arg(self.dir.path()).status().expect("run postgres.sh stop");
        assert!(status.success());
    }
}

#[cfg(feature = "postgres")]
impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "postgres")]
#[test]
fn ready_turns_not_ready_naming_the_store_when_postgres_stops() {
    let Some(pg) = OwnPostgres::start() else { return missing("PostgreSQL (initdb, pg_ctl)") };
    let served = Served::start(&["--store", &pg.url, "--orders", "20"]);
    let report = served.report(Duration::from_secs(120));
    assert!(report["problems"].as_array().is_some_and(Vec::is_empty), "the run had problems: {report}");
    let (status, body) = http_get(&served.addr, "/health/ready");
    assert_eq!(status, 200, "ready while PostgreSQL runs: {body}");

    pg.stop();
    let started = Instant::now();
    let body = loop {
        let (status, body) = http_get(&served.addr, "/health/ready");
        if status == 503 {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still {status} 30 s after PostgreSQL stopped: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let readiness: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body}"));
    let store = readiness["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "store")).unwrap_or_else(|| panic!("a store check: {body}"));
    assert_eq!(store["ok"], false, "{body}");
    assert!(store["reason"].as_str().is_some_and(|r| !r.is_empty()), "the reason is given: {body}");
    let (status, live) = http_get(&served.addr, "/health/live");
    assert_eq!((status, live.trim()), (200, "live"), "still live: the process serves");
    let _ = served.stop();
}
