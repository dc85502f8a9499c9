//! Wiring and the scenario: builds the store, bus, aggregate handlers and saga workers, places
//! orders with a deterministic mix of outcomes, waits for every checkout to finish, and checks the
//! result against the event store.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use composable_rust_core::GlobalPosition;
use composable_rust_core::{AnyCommand, CommandEnvelope, CommandHandler, EventBus, EventStore, SubscribeOptions};
use composable_rust_nats::NatsEventBus;
use composable_rust_postgres::PostgresEventStore;
use composable_rust_redpanda::{RedpandaConfig, RedpandaEventBus};
use composable_rust_runtime::outbox::spawn_relay;
use composable_rust_runtime::{AggregateHandler, DeadLetterSink, Executor, InMemoryDeadLetters, SagaRunner};
use composable_rust_sqlite::SqliteEventStore;
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use composable_rust_zenoh::{ZenohConfig, ZenohEventBus};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::inventory::{InventoryAggregate, InventoryCommand};
use crate::domain::order::{self, CancelReason, OrderAggregate, OrderCommand, OrderLine, OrderStatus};
use crate::domain::payment::{DECLINED_CARD, PaymentAggregate, PaymentStatus};
use crate::domain::{DomainEnv, ORDER_TOPIC};
use crate::saga::{CheckoutEnv, CheckoutSaga, CheckoutStep};
use composable_rust_core::Saga;

/// SKU that is never stocked: orders for it run out of stock.
pub const DISCONTINUED_SKU: &str = "sku-discontinued";

/// Why the scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A `--store` value this build does not support.
    #[error("unsupported --store {0:?}: use `memory`, `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`")]
    UnsupportedStore(String),
    /// The store could not be opened.
    #[error("event store: {0}")]
    Store(String),
    /// A `--bus` value this build does not support.
    #[error("unsupported --bus {0:?}: use `memory`, `nats://HOST:PORT`, `redpanda://HOST:PORT[?KEY=VALUE&...]` or `zenoh`")]
    UnsupportedBus(String),
    /// The bus could not be reached or set up.
    #[error("event bus: {0}")]
    Bus(String),
    /// Setup failed.
    #[error("setup failed: {0}")]
    Setup(String),
}

/// Which event store to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// In process memory.
    Memory,
    /// A SQLite file (`sqlite:PATH`): state is kept across runs.
    Sqlite(String),
    /// PostgreSQL (`postgres://...`); the schema is created if missing.
    Postgres(String),
}

impl FromStr for StoreChoice {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, AppError> {
        match s {
            "memory" | "mem" | "in-memory" => Ok(StoreChoice::Memory),
            url if url.starts_with("sqlite:") => Ok(StoreChoice::Sqlite(url.to_string())),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(StoreChoice::Postgres(url.to_string())),
            other => Err(AppError::UnsupportedStore(other.to_string())),
        }
    }
}

/// Which bus to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    /// In process memory.
    Memory,
    /// NATS JetStream at this URL.
    Nats(String),
    /// Redpanda/Kafka at these bootstrap brokers (`redpanda://HOST:PORT[,HOST:PORT][?KEY=VALUE&...]`,
    /// the query being librdkafka properties passed through).
    Redpanda {
        /// Bootstrap brokers.
        brokers: String,
        /// librdkafka properties.
        properties: Vec<(String, String)>,
    },
    /// Zenoh: embedded when both lists are empty, otherwise a peer on these endpoints
    /// (`tcp/HOST:PORT`). Every peer sees every event: connect observers, not a second checkout-saga,
    /// whose saga would act on this run's orders too (Zenoh groups do not span processes).
    Zenoh {
        /// Endpoints to listen on.
        listen: Vec<String>,
        /// Peers to connect to.
        connect: Vec<String>,
    },
}

impl FromStr for BusChoice {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, AppError> {
        match s {
            "memory" | "mem" | "in-memory" => Ok(BusChoice::Memory),
            url if url.starts_with("nats://") => Ok(BusChoice::Nats(url.to_string())),
            "zenoh" => Ok(BusChoice::Zenoh { listen: Vec::new(), connect: Vec::new() }),
            url if url.starts_with("redpanda://") || url.starts_with("kafka://") => {
                let rest = url.split_once("://").map(|(_, b)| b).unwrap_or_default();
                let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
                let mut properties = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| AppError::Bus(format!("{url}: {pair:?} is not a KEY=VALUE client property")))?;
                    properties.push((k.to_string(), v.to_string()));
                }
                Ok(BusChoice::Redpanda { brokers: brokers.trim_end_matches('/').to_string(), properties })
            }
            other => Err(AppError::UnsupportedBus(other.to_string())),
        }
    }
}

/// Counts successful publishes on any bus, for the report, and puts every topic under the run's
/// namespace (`{namespace}.order.events`) when one is set, so that runs sharing a broker never see
/// each other's events.
struct CountingBus {
    inner: Arc<dyn EventBus>,
    published: AtomicU64,
    prefix: Option<String>,
}

impl CountingBus {
    fn topic<'a>(&self, topic: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.prefix {
            Some(p) => std::borrow::Cow::Owned(format!("{p}.{topic}")),
            None => std::borrow::Cow::Borrowed(topic),
        }
    }
}

#[async_trait::async_trait]
impl EventBus for CountingBus {
    async fn publish(&self, topic: &str, event: &composable_rust_core::SerializedEvent) -> Result<(), composable_rust_core::EventBusError> {
        self.inner.publish(&self.topic(topic), event).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe_with(
        &self,
        topics: &[&str],
        options: SubscribeOptions,
    ) -> Result<composable_rust_core::EventStream, composable_rust_core::EventBusError> {
        let topics: Vec<std::borrow::Cow<'_, str>> = topics.iter().map(|t| self.topic(t)).collect();
        let refs: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
        self.inner.subscribe_with(&refs, options).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Orders to place.
    pub orders: usize,
    /// Every K-th order pays with a declined card (0: never).
    pub decline_every: usize,
    /// Every K-th order asks for a SKU that is out of stock (0: never). Takes precedence over a decline.
    pub out_of_stock_every: usize,
    /// Seed for SKUs and quantities.
    pub seed: u64,
    /// Number of stocked SKUs.
    pub skus: usize,
    /// Orders placed concurrently.
    pub concurrency: usize,
    /// Saga workers sharing one consumer group.
    pub workers: usize,
    /// How long to wait for every checkout to finish.
    pub timeout: Duration,
    /// Event store.
    pub store: StoreChoice,
    /// Event bus.
    pub bus: BusChoice,
    /// Prefix of every topic and of the saga's consumer group (runs sharing a broker stay apart).
    pub namespace: Option<String>,
    /// What this process does.
    pub role: Role,
}

/// What one `checkout-saga` process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: aggregates, saga workers, orders, verification.
    All,
    /// Places the orders and verifies them; saga workers run in other processes (`Role::Worker`)
    /// sharing the bus and a durable store.
    Driver,
    /// Runs `workers` saga workers until its standard input closes, then prints their statistics.
    Worker,
}

impl FromStr for Role {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, AppError> {
        match s {
            "all" => Ok(Role::All),
            "driver" => Ok(Role::Driver),
            "worker" => Ok(Role::Worker),
            other => Err(AppError::Setup(format!("unknown --role {other:?}: use all, driver or worker"))),
        }
    }
}

/// What a worker process did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    /// Saga steps applied by this process.
    pub saga_steps: u64,
    /// Redeliveries this process recognised and skipped.
    pub saga_duplicates: u64,
    /// Dead letters recorded.
    pub dead_letters: u64,
    /// Events this process published (those of the commands its saga steps dispatched).
    pub events_published: u64,
}

/// Runs saga workers until `stop` resolves (a worker process's standard input closing).
pub async fn run_worker(config: &Config, ready: impl FnOnce(), stop: impl Future<Output = ()>) -> Result<WorkerReport, AppError> {
    if config.store == StoreChoice::Memory {
        return Err(AppError::Setup("a worker process needs a store shared with the driver: --store sqlite:PATH or postgres://...".into()));
    }
    let w = Wiring::new(config).await?;
    let relay = spawn_relay(Arc::clone(&w.dyn_store), Arc::clone(&w.dyn_bus), Duration::from_secs(5));
    let mut workers = Vec::new();
    for _ in 0..config.workers.max(1) {
        workers.push(w.saga_runner().spawn().await.map_err(|e| AppError::Setup(e.to_string()))?);
    }
    ready();
    stop.await;
    relay.shutdown().await;
    let mut report = WorkerReport::default();
    for worker in workers {
        let stats = worker.shutdown().await;
        report.saga_steps += stats.applied;
        report.saga_duplicates += stats.duplicates;
    }
    report.dead_letters = w.dead_letters.total();
    report.events_published = w.bus.published.load(Ordering::Relaxed);
    Ok(report)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            orders: 300,
            decline_every: 7,
            out_of_stock_every: 11,
            seed: 42,
            skus: 8,
            concurrency: 16,
            workers: 2,
            timeout: Duration::from_secs(60),
            store: StoreChoice::Memory,
            bus: BusChoice::Memory,
            namespace: None,
            role: Role::All,
        }
    }
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
            let expected = if config.out_of_stock_every > 0 && n % config.out_of_stock_every == 0 {
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
            let card_token = if expected == Expected::Declined { DECLINED_CARD.to_string() } else { format!("tok_visa_{n}") };
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
    /// Events in the store (domain events and saga steps).
    pub events_persisted: usize,
    /// Events published on the bus.
    pub events_published: u64,
    /// Wall time of the scenario.
    pub elapsed_ms: u128,
    /// Saga steps applied.
    pub saga_steps: u64,
    /// Redeliveries recognised by the saga.
    pub saga_duplicates: u64,
    /// Dead letters recorded.
    pub dead_letters: u64,
    /// Everything that does not add up; empty on success.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn envelope<C: std::any::Any + Send + Sync + std::fmt::Debug>(command: C, correlation: &str) -> CommandEnvelope {
    CommandEnvelope { command_id: Uuid::new_v4(), correlation_id: Some(correlation.to_string()), causation_id: None, command: AnyCommand::new(command) }
}

/// Everything the scenario runs on.
struct Wiring {
    bus: Arc<CountingBus>,
    dyn_store: Arc<dyn EventStore>,
    dyn_bus: Arc<dyn EventBus>,
    dead_letters: Arc<InMemoryDeadLetters>,
    executor: Executor,
    orders: Arc<AggregateHandler<OrderAggregate>>,
    inventory: Arc<AggregateHandler<InventoryAggregate>>,
    payments: Arc<AggregateHandler<PaymentAggregate>>,
    saga_env: CheckoutEnv,
    saga_group: Option<String>,
}

impl Wiring {
    async fn new(config: &Config) -> Result<Self, AppError> {
        let dyn_store: Arc<dyn EventStore> = match &config.store {
            StoreChoice::Memory => Arc::new(InMemoryEventStore::new()),
            StoreChoice::Sqlite(url) => Arc::new(SqliteEventStore::open_url(url).await.map_err(|e| AppError::Store(e.to_string()))?),
            StoreChoice::Postgres(url) => {
                let store = PostgresEventStore::connect(url).await.map_err(|e| AppError::Store(e.to_string()))?;
                store.migrate().await.map_err(|e| AppError::Store(e.to_string()))?;
                Arc::new(store)
            }
        };
        let inner: Arc<dyn EventBus> = match &config.bus {
            // Room for every event of the run, so that no subscriber can lag behind the burst of orders.
            BusChoice::Memory => Arc::new(InMemoryEventBus::with_capacity((config.orders * 8).max(65_536))),
            BusChoice::Nats(url) => Arc::new(NatsEventBus::connect(url).await.map_err(|e| AppError::Bus(e.to_string()))?),
            BusChoice::Redpanda { brokers, properties } => {
                let mut kafka = RedpandaConfig::new(brokers.clone());
                kafka.properties.extend(properties.iter().cloned());
                Arc::new(RedpandaEventBus::connect_with(kafka).await.map_err(|e| AppError::Bus(e.to_string()))?)
            }
            BusChoice::Zenoh { listen, connect } => {
                let mut zenoh = listen.iter().fold(ZenohConfig::embedded(), ZenohConfig::listen);
                zenoh = connect.iter().fold(zenoh, ZenohConfig::connect);
                // Room for every event of the run, as for the in-memory bus.
                zenoh = zenoh.subscriber_capacity((config.orders * 8).max(65_536));
                Arc::new(ZenohEventBus::open(zenoh).await.map_err(|e| AppError::Bus(e.to_string()))?)
            }
        };
        let bus = Arc::new(CountingBus { inner, published: AtomicU64::new(0), prefix: config.namespace.clone() });
        let dyn_bus: Arc<dyn EventBus> = bus.clone();
        let dead_letters = Arc::new(InMemoryDeadLetters::default());
        let executor = Executor::builder().dead_letters(Arc::clone(&dead_letters) as Arc<dyn DeadLetterSink>).build();
        let domain = DomainEnv { store: Arc::clone(&dyn_store), bus: Arc::clone(&dyn_bus) };
        let orders = Arc::new(AggregateHandler::new(OrderAggregate, domain.clone(), Arc::clone(&dyn_store), executor.clone()));
        let inventory = Arc::new(AggregateHandler::new(InventoryAggregate, domain.clone(), Arc::clone(&dyn_store), executor.clone()));
        let payments = Arc::new(AggregateHandler::new(PaymentAggregate, domain, Arc::clone(&dyn_store), executor.clone()));
        let saga_env = CheckoutEnv {
            orders: Arc::clone(&orders) as Arc<dyn CommandHandler>,
            inventory: Arc::clone(&inventory) as Arc<dyn CommandHandler>,
            payments: Arc::clone(&payments) as Arc<dyn CommandHandler>,
        };
        let saga_group = config.namespace.as_ref().map(|ns| format!("saga-{}-{ns}", CheckoutSaga::NAME));
        Ok(Self { bus, dyn_store, dyn_bus, dead_letters, executor, orders, inventory, payments, saga_env, saga_group })
    }

    fn saga_runner(&self) -> SagaRunner<CheckoutSaga> {
        let runner = SagaRunner::new(CheckoutSaga, self.saga_env.clone(), Arc::clone(&self.dyn_store), Arc::clone(&self.dyn_bus), self.executor.clone());
        match &self.saga_group {
            Some(group) => runner.with_group(group.clone()),
            None => runner,
        }
    }
}

/// Runs the scenario.
pub async fn run(config: &Config) -> Result<Report, AppError> {
    if config.role == Role::Driver && config.store == StoreChoice::Memory {
        return Err(AppError::Setup("--role driver needs a store shared with the worker processes: --store sqlite:PATH or postgres://...".into()));
    }
    let w = Wiring::new(config).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let plan = plan_orders(config, &run);
    let head_before = head_position(&*w.dyn_store).await.map_err(|e| AppError::Store(e.to_string()))?;
    let started = Instant::now();

    // A durable store may hold publishes a crashed run never made: the relay publishes those older
    // than its interval now and checks again every few seconds (at-least-once; the saga recognises
    // what it has seen).
    let relay = (config.store != StoreChoice::Memory).then(|| spawn_relay(Arc::clone(&w.dyn_store), Arc::clone(&w.dyn_bus), Duration::from_secs(5)));

    // Watch order outcomes from the bus to know when every checkout is done.
    let mut outcomes = w.dyn_bus.subscribe_with(&[ORDER_TOPIC], SubscribeOptions::exclusive()).await.map_err(|e| AppError::Setup(e.to_string()))?;
    let mut workers = Vec::new();
    let in_process_workers = if config.role == Role::Driver { 0 } else { config.workers.max(1) };
    for _ in 0..in_process_workers {
        workers.push(w.saga_runner().spawn().await.map_err(|e| AppError::Setup(e.to_string()))?);
    }

    // Stock every SKU with exactly what the orders need plus a margin, so only the discontinued SKU runs out.
    let mut demand: BTreeMap<String, u32> = BTreeMap::new();
    for o in plan.iter().filter(|o| o.expected != Expected::OutOfStock) {
        *demand.entry(o.line.sku.clone()).or_default() += o.line.quantity;
    }
    for (sku, quantity) in &demand {
        w.inventory
            .handle(&envelope(InventoryCommand::Restock { sku: sku.clone(), quantity: quantity + 5 }, sku))
            .await
            .map_err(|e| AppError::Setup(format!("restocking {sku}: {e}")))?;
    }

    let placed = futures::stream::iter(plan.iter())
        .map(|o| {
            let orders = Arc::clone(&w.orders);
            async move { orders.handle(&envelope(OrderCommand::Place { order_id: o.order_id.clone(), line: o.line.clone() }, &o.order_id)).await }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut problems: Vec<String> = placed.into_iter().filter_map(Result::err).map(|e| format!("placing an order failed: {e}")).collect();

    let deadline = tokio::time::Instant::now() + config.timeout;
    let finished = wait_for_outcomes(&mut outcomes, plan.len(), deadline).await;
    if finished < plan.len() {
        problems.push(format!("{} of {} orders did not reach a final state within {:?}", plan.len() - finished, plan.len(), config.timeout));
    }
    // The order's final event is also the saga's last step: wait for the workers to record it.
    let checker = w.saga_runner();
    let unfinished_sagas = wait_for_sagas(&checker, &plan, deadline).await?;
    let elapsed_ms = started.elapsed().as_millis();
    if unfinished_sagas > 0 {
        problems.push(format!("{unfinished_sagas} checkout sagas did not reach a final state within {:?}", config.timeout));
    }
    let (mut saga_steps, mut saga_duplicates) = (0, 0);
    if let Some(relay) = relay {
        relay.shutdown().await;
    }
    for worker in workers {
        let stats = worker.shutdown().await;
        saga_steps += stats.applied;
        saga_duplicates += stats.duplicates;
        if stats.lagged_events > 0 {
            problems.push(format!("a saga worker missed {} events (bus lag)", stats.lagged_events));
        }
    }

    let tally = verify_orders(&w, &checker, &plan, &mut problems).await?;
    problems.extend(check_stock(&plan, &demand, &w.inventory, &run).await?);
    let head_after = head_position(&*w.dyn_store).await.map_err(|e| AppError::Store(e.to_string()))?;
    if w.dead_letters.total() > 0 {
        problems.push(format!("{} dead letters, first: {:?}", w.dead_letters.total(), w.dead_letters.letters().first()));
    }
    Ok(Report {
        orders: plan.len(),
        confirmed: tally.confirmed,
        cancelled: tally.out_of_stock + tally.declined,
        cancelled_out_of_stock: tally.out_of_stock,
        cancelled_payment_declined: tally.declined,
        events_persisted: usize::try_from(head_after.1 - head_before.1).unwrap_or(usize::MAX),
        events_published: w.bus.published.load(Ordering::Relaxed),
        elapsed_ms,
        saga_steps,
        saga_duplicates,
        dead_letters: w.dead_letters.total(),
        problems,
    })
}

#[derive(Default)]
struct Tally {
    confirmed: usize,
    out_of_stock: usize,
    declined: usize,
}

/// Loads every order, payment and saga instance from the store and checks each ended as planned.
async fn verify_orders(w: &Wiring, checker: &SagaRunner<CheckoutSaga>, plan: &[PlannedOrder], problems: &mut Vec<String>) -> Result<Tally, AppError> {
    let mut tally = Tally::default();
    for o in plan {
        let order = w.orders.load(&o.order_id, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let payment = w.payments.load(&o.order_id, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let saga = checker.load_instance(&o.order_id).await.map_err(|e| AppError::Setup(e.to_string()))?;
        match order.status {
            OrderStatus::Confirmed => tally.confirmed += 1,
            OrderStatus::Cancelled(CancelReason::OutOfStock) => tally.out_of_stock += 1,
            OrderStatus::Cancelled(CancelReason::PaymentDeclined) => tally.declined += 1,
            _ => {}
        }
        let consistent = match o.expected {
            Expected::Confirmed => {
                order.status == OrderStatus::Confirmed
                    && payment.status == PaymentStatus::Captured
                    && payment.captured_cents == o.line.amount_cents
                    && saga.step == CheckoutStep::Confirmed
            }
            Expected::OutOfStock => {
                order.status == OrderStatus::Cancelled(CancelReason::OutOfStock)
                    && payment.status == PaymentStatus::None
                    && saga.step == CheckoutStep::Cancelled(CancelReason::OutOfStock)
            }
            Expected::Declined => {
                order.status == OrderStatus::Cancelled(CancelReason::PaymentDeclined)
                    && payment.status == PaymentStatus::Declined
                    && saga.step == CheckoutStep::Cancelled(CancelReason::PaymentDeclined)
                    && saga.stock_released
            }
        };
        if !consistent && problems.len() < 20 {
            problems.push(format!("{}: expected {:?}, order {:?}, payment {:?}, saga {:?}", o.order_id, o.expected, order.status, payment.status, saga.step));
        }
    }
    Ok(tally)
}

/// Polls each checkout's saga instance (rebuilt from its stream) until it is complete or the deadline
/// passes; returns how many are not complete.
async fn wait_for_sagas(checker: &SagaRunner<CheckoutSaga>, plan: &[PlannedOrder], deadline: tokio::time::Instant) -> Result<usize, AppError> {
    let mut unfinished = 0;
    for o in plan {
        loop {
            let state = checker.load_instance(&o.order_id).await.map_err(|e| AppError::Setup(e.to_string()))?;
            if CheckoutSaga.is_complete(&state) {
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

/// Counts distinct orders confirmed or cancelled on the bus until `expected` or the deadline.
async fn wait_for_outcomes(outcomes: &mut composable_rust_core::EventStream, expected: usize, deadline: tokio::time::Instant) -> usize {
    let mut done: HashSet<String> = HashSet::new();
    while done.len() < expected {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, outcomes.next()).await else { break };
        let Ok(delivery) = item else { continue };
        let event = delivery.event();
        if event.event_type == order::event_types::CONFIRMED || event.event_type == order::event_types::CANCELLED {
            if let Some(id) = &event.metadata.correlation_id {
                done.insert(id.clone());
            }
        }
        let _ = delivery.ack().await;
    }
    done.len()
}

/// The last global position and the number of events in the store, read page by page.
async fn head_position(store: &dyn EventStore) -> Result<(GlobalPosition, u64), composable_rust_core::EventStoreError> {
    let mut after = GlobalPosition(0);
    let mut count = 0u64;
    loop {
        let page = store.read_all(after, 4096).await?;
        let Some(last) = page.last() else { return Ok((after, count)) };
        after = last.position;
        count += page.len() as u64;
    }
}

/// Stock balances per SKU: restocked = available + reserved, and what this run reserved is exactly
/// what its confirmed orders bought (a persistent store also holds earlier runs' reservations).
async fn check_stock(
    plan: &[PlannedOrder],
    demand: &BTreeMap<String, u32>,
    inventory: &AggregateHandler<InventoryAggregate>,
    run: &str,
) -> Result<Vec<String>, AppError> {
    let mut problems = Vec::new();
    let mut skus: Vec<&String> = demand.keys().collect();
    let discontinued = DISCONTINUED_SKU.to_string();
    skus.push(&discontinued);
    for sku in skus {
        let state = inventory.load(sku, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let reserved: u32 = state.reservations.values().sum();
        if state.restocked != state.available + reserved {
            problems.push(format!("{sku}: restocked {} != available {} + reserved {reserved}", state.restocked, state.available));
        }
        let confirmed: BTreeMap<String, u32> =
            plan.iter().filter(|o| o.expected == Expected::Confirmed && &o.line.sku == sku).map(|o| (o.order_id.clone(), o.line.quantity)).collect();
        let prefix = format!("order-{run}-");
        let this_run: BTreeMap<String, u32> = state.reservations.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), *v)).collect();
        if this_run != confirmed {
            problems.push(format!("{sku}: {} reservations held, {} confirmed orders", state.reservations.len(), confirmed.len()));
        }
    }
    Ok(problems)
}
