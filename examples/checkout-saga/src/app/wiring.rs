//! Wiring: the store, the bus (with fault injection and counting), one executor owning them, the
//! aggregate handlers registered with its command router, and saga workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use composable_rust_core::{EventBus, EventStore, SubscribeOptions};
use composable_rust_nats::NatsEventBus;
use composable_rust_postgres::PostgresEventStore;
use composable_rust_redpanda::{RedpandaConfig, RedpandaEventBus};
use composable_rust_runtime::{AggregateHandler, CommandRouter, DeadLetterSink, Executor, InMemoryDeadLetters, RetryPolicy, SagaRunner};
use composable_rust_sqlite::SqliteEventStore;
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use composable_rust_zenoh::{ZenohConfig, ZenohEventBus};

use super::config::{AppError, BusChoice, Config, StoreChoice};
use super::faults::{Dice, FlakyBus, FlakyStore};
use crate::domain::inventory::InventoryAggregate;
use crate::domain::order::OrderAggregate;
use crate::domain::payment::PaymentAggregate;
use crate::saga::CheckoutSaga;
use composable_rust_core::Saga;

/// Counts successful publishes on any bus, for the report, and puts every topic under the run's
/// namespace (`{namespace}.order.events`) when one is set, so that runs sharing a broker never see
/// each other's events.
pub(crate) struct CountingBus {
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

/// Everything the scenario runs on.
pub(crate) struct Wiring {
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
    saga_group: Option<String>,
}

impl Wiring {
    pub(crate) async fn new(config: &Config) -> Result<Self, AppError> {
        let store: Arc<dyn EventStore> = match &config.store {
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
        let dice = Dice::new(config.faults);
        let (runtime_store, inner): (Arc<dyn EventStore>, Arc<dyn EventBus>) = if config.faults.any() {
            (
                Arc::new(FlakyStore { inner: Arc::clone(&store), dice: Arc::clone(&dice) }),
                Arc::new(FlakyBus { inner, dice: Arc::clone(&dice) }),
            )
        } else {
            (Arc::clone(&store), inner)
        };
        let bus = Arc::new(CountingBus { inner, published: AtomicU64::new(0), prefix: config.namespace.clone() });
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
        let registered = |e: composable_rust_runtime::RouterError| AppError::Setup(e.to_string());
        let orders = AggregateHandler::new(OrderAggregate, (), executor.clone()).register().map_err(registered)?;
        let inventory = AggregateHandler::new(InventoryAggregate, (), executor.clone()).register().map_err(registered)?;
        let payments = AggregateHandler::new(PaymentAggregate, (), executor.clone()).register().map_err(registered)?;
        let saga_group = config.namespace.as_ref().map(|ns| format!("saga-{}-{ns}", CheckoutSaga::NAME));
        Ok(Self { bus, store, dyn_bus, dead_letters, executor, orders, inventory, payments, dice, saga_group })
    }

    pub(crate) fn saga_runner(&self) -> SagaRunner<CheckoutSaga> {
        let runner = SagaRunner::new(CheckoutSaga, (), self.executor.clone());
        match &self.saga_group {
            Some(group) => runner.with_group(group.clone()),
            None => runner,
        }
    }

    /// Publishes counted so far.
    pub(crate) fn published(&self) -> u64 {
        self.bus.published.load(Ordering::Relaxed)
    }
}
