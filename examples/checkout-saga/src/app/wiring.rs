//! Wiring: the store and the bus connected from their URLs by the `composable-rust` facade, the bus
//! wrapped in the runtime's decorators (fault injection, the run's namespace, counting), one executor
//! owning them, the aggregate handlers registered with its command router, and saga workers.

use std::sync::Arc;
use std::time::Duration;

use composable_rust::runtime::ProjectionRunner;
use composable_rust::runtime::{
    AggregateHandler, CommandRouter, CountingBus, DeadLetterSink, Executor, InMemoryDeadLetters, NamespacedBus, RetryPolicy, SagaRunner,
};
use composable_rust::{EventBus, EventStore, ReadModelStore};

use super::config::{AppError, Config};
use super::faults::{Dice, FlakyBus, FlakyStore};
use crate::domain::inventory::InventoryAggregate;
use crate::domain::order::OrderAggregate;
use crate::domain::payment::PaymentAggregate;
use crate::projection::OrderSummary;
use crate::saga::CheckoutSaga;

/// Everything the scenario runs on.
pub(crate) struct Wiring {
    /// Counts this process's publishes, for the report.
    pub(crate) bus: Arc<CountingBus>,
    /// The real store (no injected faults): what verification reads.
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) dyn_bus: Arc<dyn EventBus>,
    pub(crate) dead_letters: Arc<InMemoryDeadLetters>,
    pub(crate) executor: Executor,
    pub(crate) orders: Arc<AggregateHandler<OrderAggregate>>,
    pub(crate) inventory: Arc<AggregateHandler<InventoryAggregate>>,
    pub(crate) payments: Arc<AggregateHandler<PaymentAggregate>>,
    pub(crate) dice: Arc<Dice>,
    pub(crate) saga: CheckoutSaga,
    /// The store's read-model side (every store has one), where the order summary lives.
    pub(crate) models: Arc<dyn ReadModelStore>,
}

impl Wiring {
    pub(crate) async fn new(config: &Config) -> Result<Self, AppError> {
        let store = config.store.connect().await.map_err(|e| AppError::Store(e.to_string()))?;
        let mut bus_url = config.bus.clone();
        // Room for every event of the run, so that no subscriber can lag behind the burst of orders.
        bus_url.set_default_capacity((config.orders * 8).max(65_536));
        let inner = bus_url.connect().await.map_err(|e| AppError::Bus(e.to_string()))?;
        let dice = Dice::new(config.faults);
        let (runtime_store, inner): (Arc<dyn EventStore>, Arc<dyn EventBus>) = if config.faults.any() {
            (Arc::new(FlakyStore { inner: Arc::clone(&store), dice: Arc::clone(&dice) }), Arc::new(FlakyBus { inner, dice: Arc::clone(&dice) }))
        } else {
            (Arc::clone(&store), inner)
        };
        // Every topic and consumer group (the saga's too) under `{namespace}.`, so that runs sharing a
        // broker never see each other's events.
        let inner: Arc<dyn EventBus> = match &config.namespace {
            Some(ns) => Arc::new(NamespacedBus::new(inner, ns).map_err(|e| AppError::Setup(format!("--namespace {ns:?}: {e}")))?),
            None => inner,
        };
        let bus = Arc::new(CountingBus::counting(inner));
        let dyn_bus: Arc<dyn EventBus> = bus.clone();
        let dead_letters = Arc::new(InMemoryDeadLetters::default());
        // Injected faults are frequent by design: retry them quickly so the run measures the
        // guarantees, not the backoff.
        let retry = if config.faults.any() {
            RetryPolicy { max_attempts: 8, initial_backoff: Duration::from_millis(2), max_backoff: Duration::from_millis(50) }
        } else {
            RetryPolicy::default()
        };
        let executor = Executor::builder()
            .retry(retry)
            .dead_letters(Arc::clone(&dead_letters) as Arc<dyn DeadLetterSink>)
            .store(runtime_store)
            .bus(Arc::clone(&dyn_bus))
            .commands(CommandRouter::new())
            .build();
        let registered = |e: composable_rust::runtime::RouterError| AppError::Setup(e.to_string());
        let orders = AggregateHandler::new(OrderAggregate, (), executor.clone()).register().map_err(registered)?;
        let inventory = AggregateHandler::new(InventoryAggregate, (), executor.clone()).register().map_err(registered)?;
        let payments = AggregateHandler::new(PaymentAggregate, (), executor.clone()).register().map_err(registered)?;
        let models = Arc::clone(&store).read_model_store().ok_or_else(|| AppError::Setup("this store keeps no read models".into()))?;
        Ok(Self { bus, store, dyn_bus, dead_letters, executor, orders, inventory, payments, dice, saga: CheckoutSaga::new(config.payment_timeout), models })
    }

    pub(crate) fn saga_runner(&self) -> SagaRunner<CheckoutSaga> {
        SagaRunner::new(self.saga, (), self.executor.clone())
    }

    /// Spawns one saga worker, fed as the config says.
    pub(crate) async fn spawn_saga_worker(&self, config: &Config) -> Result<composable_rust::runtime::SagaRunnerHandle, AppError> {
        let runner = self.saga_runner();
        let spawned = if config.sagas_from_store() {
            let filter = composable_rust::EventFilter::all().category("order").category("inventory").category("payment");
            runner.spawn_from_store(filter)
        } else {
            runner.spawn().await
        };
        spawned.map_err(|e| AppError::Setup(e.to_string()))
    }

    /// A runner of the order summary projection over the real store.
    pub(crate) fn summary(&self) -> ProjectionRunner<OrderSummary> {
        ProjectionRunner::new(OrderSummary, Arc::clone(&self.store), Arc::clone(&self.models))
    }

    /// Publishes counted so far.
    pub(crate) fn published(&self) -> u64 {
        self.bus.counters().published()
    }
}
