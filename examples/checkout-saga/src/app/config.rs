//! What a run is told to do: the command-line choices of store, bus and role, and the settings.

use std::str::FromStr;
use std::time::Duration;

use super::faults::Faults;

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
    /// Faults injected into the run.
    pub faults: Faults,
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
            faults: Faults::default(),
        }
    }
}

