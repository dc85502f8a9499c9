//! The scenario: a deterministic mix of orders, placed concurrently, waited for, then verified.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use composable_rust::SubscribeOptions;
use composable_rust::runtime::outbox::{OutboxRelay, RelayConfig, spawn_relay};
use composable_rust::runtime::{DeadLetterSink, SagaRunner};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::config::{AppError, Config, DISCONTINUED_SKU, Role, StoreUrl};
use super::verify::{Invariants, check_invariants, check_projection, check_stock, head_position, verify_orders};
use super::wiring::Wiring;
use crate::dashboard::Dashboard;
use crate::domain::ORDER_TOPIC;
use crate::domain::inventory::InventoryCommand;
use crate::domain::order::{self, OrderCommand, OrderLine};
use crate::domain::payment::{DECLINED_CARD, SLOW_CARD};
use crate::projection::{SummaryReport, read_summary};
use crate::saga::CheckoutSaga;
use composable_rust::Saga;

/// What a worker process did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    /// Saga steps applied by this process.
    pub saga_steps: u64,
    /// Redeliveries this process recognised and skipped.
    pub saga_duplicates: u64,
    /// Dead letters recorded.
    pub dead_letters: u64,
    /// Payment deadlines this process fired.
    pub deadlines_fired: u64,
    /// Events this process published (those of the commands its saga steps dispatched).
    pub events_published: u64,
}

/// Runs saga workers until `stop` resolves (a worker process's standard input closing).
pub async fn run_worker(config: &Config, ready: impl FnOnce(), stop: impl Future<Output = ()>) -> Result<WorkerReport, AppError> {
    if config.store == StoreUrl::Memory {
        return Err(AppError::Setup("a worker process needs a store shared with the driver: --store sqlite:PATH or postgres://...".into()));
    }
    let w = Wiring::new(config).await?;
    let relay = spawn_relay(w.relay(), Duration::from_secs(1));
    let mut workers = Vec::new();
    for _ in 0..config.workers.max(1) {
        workers.push(w.spawn_saga_worker(config).await?);
    }
    ready();
    stop.await;
    relay.shutdown().await;
    let mut report = WorkerReport::default();
    for worker in workers {
        let stats = worker.shutdown().await;
        report.saga_steps += stats.applied;
        report.saga_duplicates += stats.duplicates;
        report.deadlines_fired += stats.deadlines_fired;
    }
    report.dead_letters = w.dead_letters.total();
    report.events_published = w.published();
    Ok(report)
}

/// The expected end of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Paid and confirmed.
    Confirmed,
    /// Cancelled for lack of stock, never charged.
    OutOfStock,
    /// Card declined, stock released.
    Declined,
    /// The payment provider never answered: cancelled by the payment deadline, stock released.
    TimedOut,
}

/// One generated order.
#[derive(Debug, Clone)]
pub struct PlannedOrder {
    /// Order id.
    pub order_id: String,
    /// The line.
    pub line: OrderLine,
    /// How it must end.
    pub expected: Expected,
}

/// The deterministic order mix for a config. `run` tags the order ids, so that runs against a
/// persistent store never collide.
pub fn plan_orders(config: &Config, run: &str) -> Vec<PlannedOrder> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    (1..=config.orders)
        .map(|n| {
            let every = |k: usize| k > 0 && n % k == 0;
            let expected = if every(config.slow_payments_every) {
                Expected::TimedOut
            } else if every(config.out_of_stock_every) {
                Expected::OutOfStock
            } else if config.decline_every > 0 && n % config.decline_every == 0 {
                Expected::Declined
            } else {
                Expected::Confirmed
            };
            let sku_index = rng.random_range(0..config.skus.max(1));
            let quantity = rng.random_range(1..=3u32);
            let sku = if expected == Expected::OutOfStock { DISCONTINUED_SKU.to_string() } else { format!("sku-{sku_index}") };
            let unit_price = 1_000 + 250 * sku_index as u64;
            let card_token = match expected {
                Expected::Declined => DECLINED_CARD.to_string(),
                Expected::TimedOut => SLOW_CARD.to_string(),
                _ => format!("tok_visa_{n}"),
            };
            PlannedOrder {
                order_id: format!("order-{run}-{n:06}"),
                line: OrderLine { sku, quantity, amount_cents: unit_price * u64::from(quantity), card_token },
                expected,
            }
        })
        .collect()
}

/// What the run did, as printed by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Orders placed.
    pub orders: usize,
    /// Orders confirmed.
    pub confirmed: usize,
    /// Orders cancelled.
    pub cancelled: usize,
    /// Of which for lack of stock.
    pub cancelled_out_of_stock: usize,
    /// Of which for a declined payment.
    pub cancelled_payment_declined: usize,
    /// Of which because the payment provider did not answer before the payment deadline.
    pub timed_out: usize,
    /// Payment deadlines fired by this process's saga workers.
    pub deadlines_fired: u64,
    /// Events in the store (domain events and saga steps).
    pub events_persisted: usize,
    /// Events published on the bus.
    pub events_published: u64,
    /// SKUs stocked before the orders (each a published `StockAdded` event).
    pub skus_stocked: usize,
    /// Orders placed per second of wall time, until every checkout finished.
    pub orders_per_sec: f64,
    /// Median time from placing an order to its final event on the bus.
    pub p50_ms: f64,
    /// 99th percentile of that time.
    pub p99_ms: f64,
    /// Wall time of the scenario.
    pub elapsed_ms: u128,
    /// Saga steps applied.
    pub saga_steps: u64,
    /// Redeliveries recognised by the saga.
    pub saga_duplicates: u64,
    /// Dead letters recorded.
    pub dead_letters: u64,
    /// Deliveries handed to the saga a second time (`--duplicate-deliveries`).
    pub injected_duplicates: u64,
    /// Appends and publishes failed on purpose (`--transient-failures`), before and after taking effect.
    pub injected_failures: u64,
    /// Orders charged more than once (must be 0).
    pub double_charges: usize,
    /// Whether every SKU's stock balances (restocked = available + reserved, reservations match).
    pub stock_balanced: bool,
    /// Whether every order reached its expected final state.
    pub all_final: bool,
    /// Decisions stored twice (a second reservation, confirmation, ... of one order; must be 0).
    pub duplicate_events: usize,
    /// Outbox entries still unpublished after the run (must be 0).
    pub outbox_pending: usize,
    /// The order summary kept by the read side (every order in the store); checked against the
    /// aggregates.
    pub projection: SummaryReport,
    /// Everything that does not add up; empty on success.
    pub problems: Vec<String>,
    /// The process's resident set at the end of the run, in KiB (`VmRSS` of `/proc/self/status`;
    /// absent where there is no `/proc`). With the in-memory store it includes every stored event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
    /// The process's peak resident set during the run, in KiB (`VmHWM`; absent where there is no
    /// `/proc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB; `None` where it cannot be read.
pub(crate) fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the scenario.
pub async fn run(config: &Config) -> Result<Report, AppError> {
    let (report, dashboard) = run_serving(config, |_| {}).await?;
    if let Some(dashboard) = dashboard {
        dashboard.shutdown().await;
    }
    Ok(report)
}

/// Runs the scenario and, with `config.serve`, the live dashboard, which `serving` is told about
/// once it listens and which is returned still serving (the caller decides when it stops).
pub async fn run_serving(config: &Config, serving: impl FnOnce(&Dashboard)) -> Result<(Report, Option<Dashboard>), AppError> {
    if config.role == Role::Driver && config.store == StoreUrl::Memory {
        return Err(AppError::Setup("--role driver needs a store shared with the worker processes: --store sqlite:PATH or postgres://...".into()));
    }
    let w = Wiring::new(config).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let plan = plan_orders(config, &run);
    let head_before = head_position(&*w.store).await.map_err(|e| AppError::Store(e.to_string()))?;
    let dashboard = start_dashboard(config, &w, serving).await?;
    let started = Instant::now();

    // The relay publishes what the outbox still holds: entries a crashed run never published, and
    // publishes that failed (at least once; the saga recognises what it has seen). An in-memory store
    // starts empty, and without injected faults every publish goes through the first time.
    let relay = (config.store != StoreUrl::Memory || config.faults.any()).then(|| spawn_relay(w.relay(), Duration::from_secs(1)));

    // Watch order outcomes from the bus to know when every checkout is done.
    let outcomes = w.dyn_bus.subscribe_with(&[ORDER_TOPIC], SubscribeOptions::exclusive()).await.map_err(|e| AppError::Setup(e.to_string()))?;
    let summary = w.summary().spawn();
    let mut workers = Vec::new();
    let in_process_workers = if config.role == Role::Driver { 0 } else { config.workers.max(1) };
    for _ in 0..in_process_workers {
        workers.push(w.spawn_saga_worker(config).await?);
    }

    let demand = stock(&w, &plan).await?;

    // Outcomes are watched while orders are placed, so each order's latency runs from its place
    // command to its final event on the bus.
    // A paced run takes the pacing on top of the timeout.
    let pacing = config.pace.map_or(Duration::ZERO, |p| p.saturating_mul(u32::try_from(plan.len()).unwrap_or(u32::MAX)));
    let deadline = tokio::time::Instant::now() + config.timeout + pacing;
    let watcher = tokio::spawn(watch_outcomes(outcomes, plan.len(), deadline));
    let (placed_at, mut problems) = place(&w, &plan, config).await;

    let done = watcher.await.map_err(|e| AppError::Setup(format!("the outcome watcher failed: {e}")))?;
    let finished = done.len();
    if finished < plan.len() {
        problems.push(format!("{} of {} orders did not reach a final state within {:?}", plan.len() - finished, plan.len(), config.timeout));
    }
    let latency = Latency::of(&placed_at, &done);
    // The order's final event is also the saga's last step: wait for the workers to record it.
    let checker = w.saga_runner();
    let unfinished_sagas = wait_for_sagas(&checker, &plan, deadline).await?;
    let elapsed_ms = started.elapsed().as_millis();
    if unfinished_sagas > 0 {
        problems.push(format!("{unfinished_sagas} checkout sagas did not reach a final state within {:?}", config.timeout));
    }
    let (saga_steps, saga_duplicates, deadlines_fired) = stop_workers(workers, &mut problems).await;
    if let Some(relay) = relay {
        relay.shutdown().await;
    }

    let verified = verify_orders(&w, &checker, &plan, &mut problems).await?;
    let stock_problems = check_stock(&plan, &demand, &w.inventory, &run).await?;
    let stock_balanced = stock_problems.is_empty();
    problems.extend(stock_problems);
    let invariants: Invariants = check_invariants(&w, &plan, &mut problems).await?;
    let head = w.store.head().await.map_err(|e| AppError::Store(e.to_string()))?;
    if let Err(e) = summary.reader().wait_for(head, config.timeout).await {
        problems.push(format!("the order summary projection did not catch up: {e}"));
    }
    if config.await_all_orders {
        let placed = wait_until_no_order_is_open(summary.reader(), &*w.store, deadline).await?;
        if placed > 0 {
            problems.push(format!("{placed} orders in the store (earlier runs included) are not final"));
        }
    }
    let projection = read_summary(summary.reader()).await.map_err(|e| AppError::Store(e.to_string()))?;
    check_projection(&w, summary.reader(), &plan, &demand, &mut problems).await?;
    summary.shutdown().await;
    let head_after = head_position(&*w.store).await.map_err(|e| AppError::Store(e.to_string()))?;
    if w.dead_letters.total() > 0 {
        problems.push(format!("{} dead letters, first: {:?}", w.dead_letters.total(), w.dead_letters.letters().first()));
    }
    let injected = &w.dice.stats;
    let report = Report {
        orders: plan.len(),
        confirmed: verified.confirmed,
        cancelled: verified.out_of_stock + verified.declined + verified.timed_out,
        cancelled_out_of_stock: verified.out_of_stock,
        cancelled_payment_declined: verified.declined,
        timed_out: verified.timed_out,
        deadlines_fired,
        events_persisted: usize::try_from(head_after.1 - head_before.1).unwrap_or(usize::MAX),
        events_published: w.published(),
        skus_stocked: demand.len(),
        #[allow(clippy::cast_precision_loss)]
        orders_per_sec: plan.len() as f64 / (elapsed_ms.max(1) as f64 / 1e3),
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        elapsed_ms,
        saga_steps,
        saga_duplicates,
        dead_letters: w.dead_letters.total(),
        injected_duplicates: injected.duplicated.load(std::sync::atomic::Ordering::Relaxed),
        injected_failures: injected.failed_before.load(std::sync::atomic::Ordering::Relaxed) + injected.failed_after.load(std::sync::atomic::Ordering::Relaxed),
        double_charges: invariants.double_charges,
        stock_balanced,
        all_final: verified.all_final && unfinished_sagas == 0 && finished == plan.len(),
        duplicate_events: invariants.duplicate_events,
        outbox_pending: invariants.outbox_pending,
        projection,
        problems,
        rss_kib: proc_status_kib("VmRSS"),
        peak_rss_kib: proc_status_kib("VmHWM"),
    };
    Ok((report, dashboard))
}

/// Stops the saga workers; their steps applied, duplicates skipped and deadlines fired, summed.
async fn stop_workers(workers: Vec<composable_rust::runtime::SagaRunnerHandle>, problems: &mut Vec<String>) -> (u64, u64, u64) {
    let (mut saga_steps, mut saga_duplicates, mut deadlines_fired) = (0, 0, 0);
    for worker in workers {
        let stats = worker.shutdown().await;
        saga_steps += stats.applied;
        saga_duplicates += stats.duplicates;
        deadlines_fired += stats.deadlines_fired;
        if stats.lagged_events > 0 {
            problems.push(format!("a saga worker missed {} events (bus lag)", stats.lagged_events));
        }
    }
    (saga_steps, saga_duplicates, deadlines_fired)
}

/// `--serve`: the dashboard, its feed starting at the store's head before the run.
async fn start_dashboard(config: &Config, w: &Wiring, serving: impl FnOnce(&Dashboard)) -> Result<Option<Dashboard>, AppError> {
    let Some(addr) = &config.serve else { return Ok(None) };
    let run_start = w.store.head().await.map_err(|e| AppError::Store(e.to_string()))?;
    let dashboard = Dashboard::start(addr, Arc::clone(&w.store), run_start).await?;
    serving(&dashboard);
    Ok(Some(dashboard))
}

/// What `--rebuild-projections` did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildOutput {
    /// Events applied to the rebuilt copy.
    pub applied: u64,
    /// Its checkpoint when it was swapped in.
    pub checkpoint: u64,
    /// Wall time of the rebuild.
    pub elapsed_ms: u128,
    /// The order summary afterwards.
    pub projection: SummaryReport,
}

/// Rebuilds the order summary from the store into a shadow copy and swaps it in (the live copy
/// serves meanwhile), logging progress.
pub async fn rebuild_projections(config: &Config) -> Result<RebuildOutput, AppError> {
    let w = Wiring::new(config).await?;
    let runner = w.summary();
    let report = runner
        .rebuild(|at, head| tracing::info!(checkpoint = at.0, head = head.0, "rebuilding the order summary"))
        .await
        .map_err(|e| AppError::Store(e.to_string()))?;
    let projection = read_summary(&runner.reader()).await.map_err(|e| AppError::Store(e.to_string()))?;
    Ok(RebuildOutput { applied: report.applied, checkpoint: report.checkpoint.0, elapsed_ms: report.elapsed.as_millis(), projection })
}

/// Waits (until `deadline`) until the order summary, caught up with the store, counts no order still
/// open; returns how many are open at the end.
async fn wait_until_no_order_is_open(
    reader: &composable_rust::runtime::ProjectionReader,
    store: &dyn composable_rust::EventStore,
    deadline: tokio::time::Instant,
) -> Result<i64, AppError> {
    loop {
        let head = store.head().await.map_err(|e| AppError::Store(e.to_string()))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = reader.wait_for(head, left).await;
        let open = reader.get("status/placed").await.map_err(|e| AppError::Store(e.to_string()))?.and_then(|v| v.as_i64()).unwrap_or_default();
        if open == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(open);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls each checkout's saga instance (rebuilt from its stream) until it is complete or the deadline
/// passes; returns how many are not complete.
async fn wait_for_sagas(checker: &SagaRunner<CheckoutSaga>, plan: &[PlannedOrder], deadline: tokio::time::Instant) -> Result<usize, AppError> {
    let mut unfinished = 0;
    let checker_saga = CheckoutSaga::default();
    for o in plan {
        loop {
            let state = checker.load_instance(&o.order_id).await.map_err(|e| AppError::Setup(e.to_string()))?;
            if checker_saga.is_complete(&state) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                unfinished += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(unfinished)
}

/// Stocks every SKU with exactly what the orders need plus a margin, so only the discontinued SKU
/// runs out; returns the demand per SKU.
async fn stock(w: &Wiring, plan: &[PlannedOrder]) -> Result<BTreeMap<String, u32>, AppError> {
    let mut demand: BTreeMap<String, u32> = BTreeMap::new();
    for o in plan.iter().filter(|o| o.expected != Expected::OutOfStock) {
        *demand.entry(o.line.sku.clone()).or_default() += o.line.quantity;
    }
    for (sku, quantity) in &demand {
        w.inventory
            .send(InventoryCommand::Restock { sku: sku.clone(), quantity: quantity + 5 })
            .await
            .map_err(|e| AppError::Setup(format!("restocking {sku}: {e}")))?;
    }
    Ok(demand)
}

/// Places every order, `concurrency` at a time; returns when each was placed and the failures.
async fn place(w: &Wiring, plan: &[PlannedOrder], config: &Config) -> (HashMap<String, Instant>, Vec<String>) {
    let crash_after = config.crash_after;
    let placed_at: Arc<parking_lot::Mutex<HashMap<String, Instant>>> = Arc::default();
    let placed_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let placed = futures::stream::iter(plan.iter().enumerate())
        .map(|(i, o)| {
            let orders = Arc::clone(&w.orders);
            let placed_at = Arc::clone(&placed_at);
            let placed_count = Arc::clone(&placed_count);
            // `--pace-ms`: the i-th order goes out at i times the pace.
            let at = config.pace.map(|p| start + p.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)));
            async move {
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                }
                placed_at.lock().insert(o.order_id.clone(), Instant::now());
                let placed = orders.send(OrderCommand::Place { order_id: o.order_id.clone(), line: o.line.clone() }).await;
                if crash_after.is_some_and(|n| placed_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= n) {
                    // `--crash-after`: die like a killed process, mid-run, no clean shutdown.
                    tracing::warn!("--crash-after reached: aborting the process");
                    std::process::abort();
                }
                placed
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let problems = placed.into_iter().filter_map(Result::err).map(|e| format!("placing an order failed: {e}")).collect();
    let placed_at = std::mem::take(&mut *placed_at.lock());
    (placed_at, problems)
}

/// When each order's final event (confirmed or cancelled) was seen on the bus, until `expected`
/// orders finished or the deadline passed.
async fn watch_outcomes(mut outcomes: composable_rust::EventStream, expected: usize, deadline: tokio::time::Instant) -> HashMap<String, Instant> {
    let mut done: HashMap<String, Instant> = HashMap::new();
    while done.len() < expected {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, outcomes.next()).await else { break };
        let Ok(delivery) = item else { continue };
        let event = delivery.event();
        if event.event_type == order::event_types::CONFIRMED || event.event_type == order::event_types::CANCELLED {
            if let Some(id) = &event.metadata.correlation_id {
                done.entry(id.clone()).or_insert_with(Instant::now);
            }
        }
        let _ = delivery.ack().await;
    }
    done
}

/// Completion latency percentiles over the orders that finished.
#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
}

impl Latency {
    fn of(placed: &HashMap<String, Instant>, done: &HashMap<String, Instant>) -> Self {
        let mut ms: Vec<f64> = done.iter().filter_map(|(id, end)| placed.get(id).map(|start| end.duration_since(*start).as_secs_f64() * 1e3)).collect();
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the samples at or below it.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
            ms[rank - 1]
        };
        Self { p50_ms: at(0.50), p99_ms: at(0.99) }
    }
}

impl Wiring {
    /// An outbox relay for this wiring (through the fault-injecting bus, dead-lettering into the
    /// run's sink).
    pub(crate) fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(
            Arc::clone(&self.store),
            Arc::clone(&self.dyn_bus),
            Arc::clone(&self.dead_letters) as Arc<dyn DeadLetterSink>,
            RelayConfig::default().min_age(Duration::from_millis(500)),
        )
    }

    /// One relay pass publishing everything pending now (no minimum age).
    pub(crate) async fn relay_now(&self) -> Result<composable_rust::runtime::outbox::RelayReport, composable_rust::EventStoreError> {
        OutboxRelay::new(Arc::clone(&self.store), Arc::clone(&self.dyn_bus), Arc::clone(&self.dead_letters) as Arc<dyn DeadLetterSink>, RelayConfig::default())
            .pass()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kib_lines_of_proc_status() {
        let status = "Name:\tcheckout-saga\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(98_765));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(123_456));
        assert_eq!(parse_status_kib(status, "VmSwap"), None, "a missing line is None");
        assert_eq!(parse_status_kib("VmRSS:\tlots kB\n", "VmRSS"), None, "garbage is None, not a panic");
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(proc_status_kib("VmRSS").is_some_and(|kib| kib > 0), "this process has a resident set");
        }
    }
}
