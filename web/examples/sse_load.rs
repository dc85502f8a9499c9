//! SSE load test, loopback only, bounded: N concurrent SSE clients on one server process, a paced
//! stream of events appended to an in-memory store, every client checked to receive every event
//! exactly once, in order; then a burst as fast as the store takes it; then raw tokio broadcast to
//! the same number of receivers, in the same run.
//!
//! ```sh
//! cargo run --release -p composable-rust-web --example sse_load -- --clients 10000 --rate 1000 --seconds 10
//! ```
//!
//! Flags have environment defaults (`SSE_LOAD_CLIENTS`, `SSE_LOAD_RATE`, `SSE_LOAD_SECONDS`,
//! `SSE_LOAD_BURST`, `SSE_LOAD_POLL_MS`). The clients run in a child process (this same binary),
//! so the server's memory is measured alone: memory per client is the server's RSS growth from
//! before the clients connect to when all are connected, divided by N. Both processes raise their
//! open-file limit to what N needs and stop with an explanation when the hard limit is lower. The
//! run stops by itself: every wait has a deadline.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use composable_rust_core::{AppendRequest, EventStore, ExpectedVersion, SerializedEvent, StreamId};
use composable_rust_memory::InMemoryEventStore;
use composable_rust_web::axum::Router;
use composable_rust_web::{FeedConfig, Feeds};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Parser, Debug)]
#[command(about = "SSE load test on loopback (bounded)")]
struct Args {
    /// Concurrent SSE clients.
    #[arg(long, default_value_t = env_or("SSE_LOAD_CLIENTS", 10_000))]
    clients: usize,
    /// Events appended per second during the paced phase.
    #[arg(long, default_value_t = env_or("SSE_LOAD_RATE", 1_000))]
    rate: usize,
    /// Length of the paced phase, seconds.
    #[arg(long, default_value_t = env_or("SSE_LOAD_SECONDS", 10))]
    seconds: usize,
    /// Events appended as fast as possible after the paced phase (0: no burst).
    #[arg(long, default_value_t = env_or("SSE_LOAD_BURST", 20_000))]
    burst: usize,
    /// The feed tail's poll interval, ms.
    #[arg(long, default_value_t = env_or("SSE_LOAD_POLL_MS", 20))]
    poll_ms: u64,
    /// Fix each server connection's send buffer at this many bytes (default: the kernel's).
    #[arg(long)]
    send_buffer: Option<usize>,
    /// Each client's socket receive buffer, bytes (0: the kernel's): the clients stand for
    /// browsers on other machines, whose buffers would not weigh on this kernel.
    #[arg(long, default_value_t = env_or("SSE_LOAD_CLIENT_RCVBUF", 0))]
    client_rcvbuf: u32,
    /// Payload bytes per event (sent base64-encoded).
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Internal: run as the client process of the server at this address.
    #[arg(long, hide = true)]
    client_of: Option<SocketAddr>,
    /// Internal: milestones (event counts) the client process reports.
    #[arg(long, hide = true, value_delimiter = ',')]
    milestones: Vec<u64>,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let code = match args.client_of {
        Some(addr) => runtime.block_on(client_process(addr, &args)),
        None => runtime.block_on(server_process(&args)),
    };
    std::process::exit(code);
}

/// Raises the soft open-file limit to the hard one; refuses when even that is below `needed`.
fn raise_nofile(needed: u64) -> Result<u64, String> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    if hard < needed {
        return Err(format!(
            "RLIMIT_NOFILE hard limit is {hard}, this run needs {needed} open files per process: raise it (`ulimit -Hn`, limits.conf, or the container's nofile) or pass a smaller --clients"
        ));
    }
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard).map_err(|e| format!("setrlimit(RLIMIT_NOFILE, {hard}): {e}"))?;
    }
    Ok(hard)
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

fn rss_kb() -> u64 {
    proc_status_kb("VmRSS:")
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let ticks_per_s: u64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 1000 / ticks_per_s)
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(str::to_owned)).unwrap_or_else(|| "?".to_owned())
}

fn fail(message: &str) -> i32 {
    eprintln!("sse_load: {message}");
    2
}

async fn append_one(store: &InMemoryEventStore, i: usize, payload: &Bytes) {
    let stream = StreamId::new(format!("load-{}", i % 100)).expect("stream id");
    let event = SerializedEvent::new("LoadTick.v1", payload.clone(), None);
    store.append(AppendRequest::new(stream, ExpectedVersion::Any, vec![event])).await.expect("append");
}

struct ChildLine {
    reader: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildLine {
    async fn expect(&mut self, prefix: &str, within: Duration) -> Result<String, String> {
        let line = tokio::time::timeout(within, self.reader.next_line())
            .await
            .map_err(|_| format!("the client process said nothing for {} s (waiting for `{prefix}`)", within.as_secs()))?
            .map_err(|e| format!("reading the client process: {e}"))?
            .ok_or_else(|| format!("the client process exited before `{prefix}`"))?;
        line.strip_prefix(prefix).map(|rest| rest.trim().to_owned()).ok_or_else(|| format!("expected `{prefix}` from the client process, got {line:?}"))
    }
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
async fn server_process(args: &Args) -> i32 {
    let n = args.clients;
    if let Err(e) = raise_nofile(n as u64 + 256) {
        return fail(&e);
    }
    let paced_count = args.rate * args.seconds;
    let paced_events = paced_count as u64;
    let total = paced_events + args.burst as u64;
    let payload = Bytes::from(vec![b'x'; args.payload]);

    let load_before = loadavg();
    let store = Arc::new(InMemoryEventStore::new());
    let config = FeedConfig::default().with_poll(Duration::from_millis(args.poll_ms));
    let feeds = Feeds::start(store.clone(), config).await.expect("start feeds");
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => return fail(&format!("bind 127.0.0.1:0: {e}")),
    };
    let addr = listener.local_addr().expect("local address");
    let app = Router::new().route("/events", feeds.feed());
    let mut listener = composable_rust_web::SseListener::new(listener);
    if let Some(bytes) = args.send_buffer {
        listener = listener.with_send_buffer(bytes);
    }
    tokio::spawn(async move { composable_rust_web::axum::serve(listener, app).await });
    // Let the allocator and the runtime settle before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kb();

    let exe = std::env::current_exe().expect("current executable");
    let mut child = match tokio::process::Command::new(exe)
        .arg("--client-of")
        .arg(addr.to_string())
        .arg("--clients")
        .arg(n.to_string())
        .arg("--client-rcvbuf")
        .arg(args.client_rcvbuf.to_string())
        .arg("--milestones")
        .arg(if args.burst > 0 { format!("{paced_events},{total}") } else { paced_events.to_string() })
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("spawning the client process: {e}")),
    };
    let mut lines = ChildLine { reader: BufReader::new(child.stdout.take().expect("child stdout")).lines() };

    let connect_ms = match lines.expect("connected", Duration::from_secs(300)).await {
        Ok(ms) => ms,
        Err(e) => return fail(&e),
    };
    if feeds.clients() != n {
        return fail(&format!("the client process says all {n} are connected, the server counts {}", feeds.clients()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kb();
    let per_client_kb = (rss_connected.saturating_sub(rss_before)) as f64 / n as f64;

    // Paced phase: `rate` events per second, 10 per 10 ms tick.
    let cpu_start = cpu_time();
    let paced_start = Instant::now();
    let mut rss_peak = rss_connected;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = (args.rate / 100).max(1);
    let mut appended = 0usize;
    while appended < paced_count {
        tick.tick().await;
        for _ in 0..per_tick.min(paced_count - appended) {
            append_one(&store, appended, &payload).await;
            appended += 1;
        }
        if appended % (args.rate.max(1)) < per_tick {
            rss_peak = rss_peak.max(rss_kb());
        }
    }
    let last_append = paced_start.elapsed();
    if let Err(e) = lines.expect(&format!("milestone {paced_events}"), Duration::from_secs(120)).await {
        return fail(&e);
    }
    let paced_done = paced_start.elapsed();
    let paced_cpu = cpu_time().saturating_sub(cpu_start);
    rss_peak = rss_peak.max(rss_kb());

    // Burst phase: as fast as the store takes appends.
    let burst_start = Instant::now();
    for i in 0..args.burst {
        append_one(&store, appended + i, &payload).await;
    }
    let burst_appended = burst_start.elapsed();
    if args.burst > 0 {
        if let Err(e) = lines.expect(&format!("milestone {total}"), Duration::from_secs(300)).await {
            return fail(&e);
        }
    }
    let burst_done = burst_start.elapsed();
    rss_peak = rss_peak.max(rss_kb());
    let report = match lines.expect("done", Duration::from_secs(60)).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let status = child.wait().await.is_ok_and(|s| s.success());
    let frame_bytes = frame_len(&store, paced_events / 2).await;

    // Raw tokio broadcast to as many receivers, in this same process and runtime.
    let raw_events = args.burst.max(args.rate);
    let (raw_per_s, raw_kb_per_receiver, raw_elapsed) = raw_broadcast(n, raw_events, frame_bytes).await;

    let sse_paced_per_s = (n as f64 * paced_events as f64) / paced_done.as_secs_f64();
    let sse_burst_per_s = (n as f64 * args.burst as f64) / burst_done.as_secs_f64();
    println!("SSE load test, {} clients on 127.0.0.1 (clients in a child process), {} CPUs", n, std::thread::available_parallelism().map_or(0, usize::from));
    println!("  machine load average (1 min) at start {load_before}, at end {}: other processes share these CPUs", loadavg());
    println!("  event frame: {frame_bytes} bytes on the wire (payload {} bytes, base64); tail poll {} ms", args.payload, args.poll_ms);
    println!(
        "  sockets: server send buffer {}, client receive buffer {}",
        args.send_buffer.map_or_else(|| "kernel default".to_owned(), |b| format!("{b} bytes")),
        if args.client_rcvbuf == 0 { "kernel default".to_owned() } else { format!("{} bytes", args.client_rcvbuf) }
    );
    println!("  connect: all {n} connected in {connect_ms} ms");
    println!(
        "  server memory: RSS {} MiB before, {} MiB with {n} clients: {per_client_kb:.1} KiB per client; peak RSS during the run {} MiB",
        rss_before / 1024,
        rss_connected / 1024,
        rss_peak / 1024
    );
    println!(
        "  paced: {paced_events} events at {}/s over {:.2} s; every client had every event {:.0} ms after the last append; delivered {:.0} events/s; server CPU {:.1} s ({:.0}% of one core)",
        args.rate,
        last_append.as_secs_f64(),
        (paced_done.saturating_sub(last_append)).as_secs_f64() * 1000.0,
        sse_paced_per_s,
        paced_cpu.as_secs_f64(),
        100.0 * paced_cpu.as_secs_f64() / paced_done.as_secs_f64()
    );
    println!("  server CPU per delivered event (paced): {:.0} ns", paced_cpu.as_secs_f64() * 1e9 / (n as f64 * paced_events as f64));
    if args.burst > 0 {
        println!(
            "  burst: {} events appended in {:.2} s, all delivered to all clients in {:.2} s: {:.0} events/s",
            args.burst,
            burst_appended.as_secs_f64(),
            burst_done.as_secs_f64(),
            sse_burst_per_s
        );
    }
    println!("  client process: {report} (exit {})", if status { "ok" } else { "FAILED" });
    println!(
        "  raw tokio broadcast, {n} receivers, {raw_events} events: {raw_per_s:.0} deliveries/s ({:.2} s), {raw_kb_per_receiver:.1} KiB per receiver",
        raw_elapsed.as_secs_f64()
    );
    if args.burst > 0 {
        println!("  ratio raw broadcast / SSE (burst, delivered/s): {:.1}", raw_per_s / sse_burst_per_s);
    }
    println!("  ratio raw broadcast / SSE (paced, delivered/s): {:.1}", raw_per_s / sse_paced_per_s);
    let _ = std::io::stdout().flush();
    if !status || !report.contains("errors=0") {
        return fail("the client process reports errors: see above");
    }
    0
}

/// The size of the frame of the event after `after`, as the feed sends it.
async fn frame_len(store: &Arc<InMemoryEventStore>, after: u64) -> usize {
    {
        let feeds = Feeds::start(store.clone(), FeedConfig::default().with_start_after(composable_rust_core::GlobalPosition(0))).await.expect("feeds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { composable_rust_web::axum::serve(listener, Router::new().route("/events", feeds.feed())).await });
        let mut sender = connect(addr).await.expect("connect");
        let req = hyper::Request::builder().uri(format!("/events?after={after}")).header("host", "x").body(Empty::<Bytes>::new()).expect("request");
        let mut body = sender.send_request(req).await.expect("response").into_body();
        let mut buf = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            // The preamble, then the first two events.
            if buf.windows(2).filter(|w| w == b"\n\n").count() >= 3 {
                break;
            }
        }
        server.abort();
        let text = String::from_utf8_lossy(&buf);
        text.split("\n\n").nth(1).map_or(0, |f| f.len() + 2)
    }
}

#[allow(clippy::cast_precision_loss)]
async fn raw_broadcast(receivers: usize, events: usize, frame_bytes: usize) -> (f64, f64, Duration) {
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<Bytes>>(events.next_power_of_two());
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let rss_before = rss_kb();
    let mut tasks = Vec::with_capacity(receivers);
    for _ in 0..receivers {
        let mut rx = tx.subscribe();
        let done = done.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < events {
                if let Ok(item) = rx.recv().await {
                    std::hint::black_box(item.len());
                    got += 1;
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_receiver_kb = rss_kb().saturating_sub(rss_before) as f64 / receivers as f64;
    let item = Arc::new(Bytes::from(vec![b'x'; frame_bytes.max(1)]));
    let start = Instant::now();
    for _ in 0..events {
        let _ = tx.send(item.clone());
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    assert_eq!(errors.load(Ordering::Relaxed), 0, "raw broadcast receivers lagged");
    ((receivers as f64 * events as f64) / elapsed.as_secs_f64(), per_receiver_kb, elapsed)
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What one client counted.
#[derive(Default)]
struct Counts {
    events: u64,
    errors: u64,
    resets: u64,
}

/// Scans complete frames in `chunk` for events: checks each id is the one after the previous,
/// notes resets. Returns whether a reset arrived.
fn scan(chunk: &[u8], last: &mut u64, counts: &mut Counts) -> bool {
    let mut reset = false;
    for at in memchr::memmem::find_iter(chunk, b"\nid: ") {
        let line_start = memchr::memrchr(b'\n', &chunk[..at]).map_or(0, |p| p + 1);
        let previous_line = &chunk[line_start..at];
        let digits = &chunk[at + 5..];
        let end = memchr::memchr(b'\n', digits).unwrap_or(digits.len());
        let id: u64 = std::str::from_utf8(&digits[..end]).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
        if previous_line.starts_with(b"event: reset") {
            reset = true;
            counts.resets += 1;
        } else if previous_line.starts_with(b"event: ") {
            if id != *last + 1 {
                counts.errors += 1;
            }
            *last = id;
            counts.events += 1;
        }
    }
    reset
}

/// One client: connects (holding a slot of the connect limit until its preamble arrives), reads,
/// reconnects with `Last-Event-ID` after a reset, until it has `target` events.
///
/// A minimal HTTP/1.1 client on a raw socket, so that the clients leave the CPU to the server: it
/// sends the request, checks the status line and scans the bytes as they come for complete SSE
/// frames (chunked-encoding size lines fall between frames and are skipped by the scan).
async fn one_client(addr: SocketAddr, target: u64, rcvbuf: u32, milestones: Arc<Vec<(u64, AtomicUsize)>>, permit: tokio::sync::OwnedSemaphorePermit) -> Counts {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut permit = Some(permit);
    let mut counts = Counts::default();
    let mut last = 0u64;
    let mut reached = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while last < target {
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) if rcvbuf == 0 || s.set_recv_buffer_size(rcvbuf).is_ok() => s,
            _ => {
                counts.errors += 1;
                continue;
            }
        };
        let Ok(mut stream) = socket.connect(addr).await else {
            counts.errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let resume = if last > 0 { format!("Last-Event-ID: {last}\r\n") } else { String::new() };
        if stream.write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n{resume}\r\n").as_bytes()).await.is_err() {
            counts.errors += 1;
            continue;
        }
        let mut filled = 0;
        let mut head_checked = false;
        loop {
            let n = match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            filled += n;
            if !head_checked {
                if filled < 12 {
                    continue;
                }
                if !buf.starts_with(b"HTTP/1.1 200") {
                    counts.errors += 1;
                    break;
                }
                head_checked = true;
            }
            // Only complete frames are scanned; the rest waits for the next read.
            let Some(end) = memchr::memmem::rfind(&buf[..filled], b"\n\n") else {
                if filled == buf.len() {
                    counts.errors += 1;
                    break;
                }
                continue;
            };
            let complete = end + 2;
            if permit.take().is_some() {
                // The preamble arrived: this client is connected.
                milestones[0].1.fetch_add(1, Ordering::Relaxed);
            }
            let reset = scan(&buf[..complete], &mut last, &mut counts);
            buf.copy_within(complete..filled, 0);
            filled -= complete;
            while reached + 1 < milestones.len() && last >= milestones[reached + 1].0 {
                reached += 1;
                milestones[reached].1.fetch_add(1, Ordering::Relaxed);
            }
            if reset || last >= target {
                break;
            }
        }
        if last < target && counts.resets == 0 {
            counts.errors += 1;
        }
    }
    counts
}

#[allow(clippy::cast_precision_loss)]
async fn client_process(addr: SocketAddr, args: &Args) -> i32 {
    let n = args.clients;
    if let Err(e) = raise_nofile(n as u64 + 256) {
        return fail(&e);
    }
    let target = args.milestones.iter().copied().max().unwrap_or(0);
    // Milestone 0 is "connected" (preamble received).
    let milestones: Arc<Vec<(u64, AtomicUsize)>> =
        Arc::new(std::iter::once(0).chain(args.milestones.iter().copied()).map(|m| (m, AtomicUsize::new(0))).collect());
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let milestones = milestones.clone();
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(one_client(addr, target, args.client_rcvbuf, milestones, permit)));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut said = 0;
    while said < milestones.len() {
        if milestones[said].1.load(Ordering::Relaxed) >= n {
            if said == 0 {
                println!("connected {}", started.elapsed().as_millis());
            } else {
                println!("milestone {}", milestones[said].0);
            }
            let _ = std::io::stdout().flush();
            said += 1;
            continue;
        }
        if Instant::now() > deadline {
            return fail("the clients did not all reach their milestones within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut total = Counts::default();
    let mut short = 0;
    for t in tasks {
        let c = t.await.unwrap_or(Counts { errors: 1, ..Counts::default() });
        if c.events < target {
            short += 1;
        }
        total.events += c.events;
        total.errors += c.errors;
        total.resets += c.resets;
    }
    let cpu = cpu_time();
    println!(
        "done events={} errors={} resets={} short_clients={short} rss={} MiB cpu={:.1}s ({:.0} ns per event)",
        total.events,
        total.errors + short,
        total.resets,
        rss_kb() / 1024,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e9 / total.events.max(1) as f64
    );
    let _ = std::io::stdout().flush();
    0
}
