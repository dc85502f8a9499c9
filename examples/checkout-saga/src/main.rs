//! `checkout-saga`: runs the checkout scenario and checks that every order ended as it should.

use std::process::ExitCode;
use std::time::Duration;

use checkout_saga::app::{self, BusUrl, Config, Faults, Role, SagaFeed, StoreUrl, parse_bus, parse_store};
use clap::Parser;

/// Runs N checkouts through the Order, Inventory and Payment aggregates and the CheckoutSaga, then
/// verifies the outcome against the event store. Exits 1 if any checkout did not finish or stock does
/// not balance.
#[derive(Debug, Parser)]
#[command(version, about)]
// Command-line switches are bools by nature.
#[allow(clippy::struct_excessive_bools)]
struct Args {
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    orders: usize,
    /// Every K-th order pays with a declined card (0: never).
    #[arg(long, default_value_t = 7)]
    decline_every: usize,
    /// Every K-th order asks for an out-of-stock SKU (0: never).
    #[arg(long, default_value_t = 11)]
    out_of_stock_every: usize,
    /// Every K-th order pays with a card whose provider never answers (0: never): the saga's
    /// payment deadline cancels it and releases its stock.
    #[arg(long, default_value_t = 0)]
    slow_payments_every: usize,
    /// How long the saga waits for a payment (a durable deadline) before cancelling the order.
    #[arg(long, default_value_t = 30_000)]
    payment_timeout_ms: u64,
    /// Seed for SKUs, quantities and injected faults.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Probability that a delivery is handed to the saga a second time, after the first was handled.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    duplicate_deliveries: f64,
    /// Probability that a store append or bus publish fails retryably, half the time after it took effect.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    transient_failures: f64,
    /// Stocked SKUs.
    #[arg(long, default_value_t = 8)]
    skus: usize,
    /// Orders placed concurrently.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Saga workers sharing one consumer group.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds to wait for every checkout to finish.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Event store URL: `memory`, `sqlite:PATH` (kept across runs; feature `sqlite`) or
    /// `postgres://USER@HOST:PORT/DB` (feature `postgres`).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Event bus URL: `memory`, `nats://HOST:PORT` (NATS JetStream; feature `nats`),
    /// `redpanda://HOST:PORT[,HOST:PORT]` (Redpanda or any Kafka broker; `?KEY=VALUE&...` passes
    /// librdkafka properties; feature `redpanda`), `zenoh` (embedded, or a peer with
    /// `--listen`/`--connect`; feature `zenoh`) or `dual:PRIMARY|SECONDARY[|MODE]`.
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Zenoh only: an endpoint to listen on, e.g. `tcp/127.0.0.1:7447` (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Zenoh only: a peer to connect to, e.g. `tcp/127.0.0.1:7447` (repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// Prefix for every topic and the saga's consumer group, so that runs sharing a broker stay apart.
    #[arg(long)]
    namespace: Option<String>,
    /// `all` (default): everything in this process. `driver`: place and verify orders while saga
    /// workers run in `worker` processes sharing the bus and a durable store. `worker`: run
    /// `--workers` saga workers until standard input closes, then print their statistics as JSON.
    #[arg(long, default_value = "all")]
    role: String,
    /// Rebuild the order summary projection from the store first (a shadow copy swapped in while
    /// the live one serves). With `--orders 0`, only that: prints the rebuilt summary as JSON.
    #[arg(long)]
    rebuild_projections: bool,
    /// Where saga workers take events from: `auto` (the store when it is durable and the bus is
    /// in-memory or Zenoh, so a restart loses nothing; the bus otherwise), `bus` or `store`.
    #[arg(long, default_value = "auto")]
    saga_feed: String,
    /// Abort the process (as if killed: no clean shutdown) once N orders are placed. A second run
    /// over the same durable store finishes them.
    #[arg(long)]
    crash_after: Option<usize>,
    /// Also wait until every order in the store, earlier runs' included, is final (by the order
    /// summary projection); a problem if some are not.
    #[arg(long)]
    await_all_orders: bool,
    /// Serve the live dashboard on ADDR (e.g. `127.0.0.1:8080`; port 0 picks a free one) while the
    /// run goes on and after it, until standard input closes: `/` the page, `/events` the SSE feed,
    /// `/health/live`, `/health/ready`, `/metrics`. Prints `serving http://ADDR` on standard error
    /// once it listens.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// Place one order every N milliseconds (instead of as fast as `--concurrency` allows), to
    /// watch a run live.
    #[arg(long, value_name = "N")]
    pace_ms: Option<u64>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Log at info level (RUST_LOG overrides).
    #[arg(long, short)]
    verbose: bool,
}

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if args.verbose { "info" } else { "warn,zenoh::net::routing=error" }));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let config = match config_of(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("checkout-saga: {e}");
            return ExitCode::from(2);
        }
    };
    let role = config.role;
    if config.serve.is_some() {
        // Before anything records a metric: what is recorded earlier is lost.
        if let Err(e) = composable_rust::web::install_prometheus() {
            eprintln!("checkout-saga: --serve: {e}");
            return ExitCode::FAILURE;
        }
        // The runtime's descriptions and latency histograms, now that a recorder listens.
        composable_rust::runtime::metrics::init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("checkout-saga: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if role == Role::Worker {
        return run_worker(&runtime, &config);
    }
    if args.rebuild_projections {
        match runtime.block_on(app::rebuild_projections(&config)) {
            Ok(rebuilt) if config.orders == 0 => {
                match serde_json::to_string(&rebuilt) {
                    Ok(json) => println!("{json}"),
                    Err(e) => eprintln!("checkout-saga: cannot encode the report: {e}"),
                }
                return ExitCode::SUCCESS;
            }
            Ok(rebuilt) => tracing::info!(applied = rebuilt.applied, "order summary rebuilt"),
            Err(e) => {
                eprintln!("checkout-saga: rebuilding the projections failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let serving = |d: &checkout_saga::dashboard::Dashboard| {
        eprintln!("serving http://{}", d.addr());
    };
    let (report, dashboard) = match runtime.block_on(app::run_serving(&config, serving)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("checkout-saga: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("checkout-saga: cannot encode the report: {e}"),
        }
    } else {
        print_summary(&report, &config);
    }
    if let Some(dashboard) = dashboard {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Serves on after the run, until standard input closes.
        runtime.block_on(async {
            let stdin_closed = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink()));
            let _ = stdin_closed.await;
            dashboard.shutdown().await;
        });
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        for p in &report.problems {
            eprintln!("checkout-saga: PROBLEM: {p}");
        }
        ExitCode::FAILURE
    }
}

/// The run's settings from the command line; a message for what does not parse.
fn config_of(args: &Args) -> Result<Config, String> {
    let saga_feed = args.saga_feed.parse::<SagaFeed>().map_err(|e| e.to_string())?;
    let (store, mut bus, role) = match (parse_store(&args.store), parse_bus(&args.bus), args.role.parse::<Role>()) {
        (Ok(s), Ok(b), Ok(r)) => (s, b, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(e.to_string()),
    };
    match &mut bus {
        BusUrl::Zenoh { listen, connect, .. } => {
            listen.extend(args.listen.iter().cloned());
            connect.extend(args.connect.iter().cloned());
        }
        _ if !args.listen.is_empty() || !args.connect.is_empty() => return Err("--listen and --connect apply to --bus zenoh only".into()),
        _ => {}
    }
    Ok(Config {
        orders: args.orders,
        decline_every: args.decline_every,
        out_of_stock_every: args.out_of_stock_every,
        slow_payments_every: args.slow_payments_every,
        payment_timeout: Duration::from_millis(args.payment_timeout_ms),
        seed: args.seed,
        skus: args.skus,
        concurrency: args.concurrency,
        workers: args.workers,
        timeout: Duration::from_secs(args.timeout_secs),
        store,
        bus,
        namespace: args.namespace.clone(),
        role,
        faults: Faults { duplicate_deliveries: args.duplicate_deliveries, transient_failures: args.transient_failures, seed: args.seed },
        saga_feed,
        crash_after: args.crash_after,
        await_all_orders: args.await_all_orders,
        serve: args.serve.clone(),
        pace: args.pace_ms.filter(|&ms| ms > 0).map(Duration::from_millis),
    })
}

/// A worker process: saga workers until standard input closes (the parent's signal to stop).
fn run_worker(runtime: &tokio::runtime::Runtime, config: &Config) -> ExitCode {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let ready = || {
        use std::io::Write;
        println!("ready");
        let _ = std::io::stdout().flush();
    };
    match runtime.block_on(app::run_worker(config, ready, async move { drop(rx.await) })) {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("checkout-saga: cannot encode the report: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("checkout-saga: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The human-readable summary of a run.
fn print_summary(report: &app::Report, config: &Config) {
    let bus = match &config.bus {
        BusUrl::Memory { .. } => "in-memory bus".to_string(),
        BusUrl::Nats { .. } => format!("NATS JetStream at {}", config.bus),
        BusUrl::Kafka { brokers, .. } => format!("Redpanda/Kafka at {brokers}"),
        BusUrl::Zenoh { listen, connect, .. } if listen.is_empty() && connect.is_empty() => "embedded Zenoh".to_string(),
        BusUrl::Zenoh { listen, connect, .. } => format!("Zenoh peer (listen {listen:?}, connect {connect:?})"),
        other => format!("bus {other}"),
    };
    let store = match &config.store {
        StoreUrl::Memory => "in-memory store".to_string(),
        StoreUrl::Sqlite { url, .. } => format!("SQLite store {url}"),
        StoreUrl::Postgres { url, .. } => format!("PostgreSQL store at {}", url.rsplit('@').next().unwrap_or_default()),
        other => format!("store {other}"),
    };
    println!("checkout-saga: {} orders, {store}, {bus}, {} saga worker(s)", report.orders, config.workers);
    println!(
        "  confirmed {}, cancelled {} (out of stock {}, payment declined {}, payment timed out {})",
        report.confirmed, report.cancelled, report.cancelled_out_of_stock, report.cancelled_payment_declined, report.timed_out
    );
    println!(
        "  events persisted {}, published {}, saga steps {}, redeliveries recognised {}",
        report.events_persisted, report.events_published, report.saga_steps, report.saga_duplicates
    );
    println!("  elapsed {} ms", report.elapsed_ms);
    if let (Some(rss), Some(peak)) = (report.rss_kib, report.peak_rss_kib) {
        println!("  resident set at the end {:.1} MiB, peak {:.1} MiB", kib_to_mib(rss), kib_to_mib(peak));
    }
    if report.ok() {
        println!("  every checkout reached its expected final state; stock balances; no dead letters");
    }
}

/// KiB as MiB, for printing.
fn kib_to_mib(kib: u64) -> f64 {
    // A resident set far below 2^52 KiB: exact.
    #[allow(clippy::cast_precision_loss)]
    let kib = kib as f64;
    kib / 1024.0
}
