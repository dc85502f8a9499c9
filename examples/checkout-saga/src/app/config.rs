//! What a run is told to do: the command-line choices of store, bus and role, and the settings.

use std::str::FromStr;
use std::time::Duration;

use composable_rust::ConnectError;
pub use composable_rust::bus::BusUrl;
pub use composable_rust::store::StoreUrl;

use super::faults::Faults;

/// SKU that is never stocked: orders for it run out of stock.
pub const DISCONTINUED_SKU: &str = "sku-discontinued";

/// Why the scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A `--store` URL this build cannot use: an unknown scheme, a backend not compiled in, or a
    /// malformed URL (the facade's parser says which).
    #[error("unsupported --store: {0}{hint}", hint = feature_hint(.0))]
    UnsupportedStore(#[source] ConnectError),
    /// The store could not be opened.
    #[error("event store: {0}")]
    Store(String),
    /// A `--bus` URL this build cannot use (as for `--store`).
    #[error("unsupported --bus: {0}{hint}", hint = feature_hint(.0))]
    UnsupportedBus(#[source] ConnectError),
    /// The bus could not be reached or set up.
    #[error("event bus: {0}")]
    Bus(String),
    /// Setup failed.
    #[error("setup failed: {0}")]
    Setup(String),
}

/// For a backend left out of this build: the example's own feature of the same name.
fn feature_hint(error: &ConnectError) -> String {
    match error {
        ConnectError::FeatureDisabled { feature, .. } => format!(" (for this example: cargo run -p checkout-saga --features {feature})"),
        _ => String::new(),
    }
}

/// Parses `--store`: the facade's URLs (`memory`, `sqlite:PATH`, `postgres://...`).
pub fn parse_store(url: &str) -> Result<StoreUrl, AppError> {
    url.parse().map_err(AppError::UnsupportedStore)
}

/// Parses `--bus`: the facade's URLs (`memory`, `nats://...`, `redpanda://...`, `zenoh`, `dual:...`).
pub fn parse_bus(url: &str) -> Result<BusUrl, AppError> {
    url.parse().map_err(AppError::UnsupportedBus)
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
    /// Every K-th order pays with a card whose provider never answers (0: never); the payment
    /// deadline cancels it. Takes precedence over out of stock and declines.
    pub slow_payments_every: usize,
    /// How long the saga waits for a payment before cancelling the order.
    pub payment_timeout: Duration,
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
    pub store: StoreUrl,
    /// Event bus (in-memory and Zenoh buses left at their default capacity get room for every event
    /// of the run).
    pub bus: BusUrl,
    /// Prefix of every topic and of the saga's consumer group (runs sharing a broker stay apart).
    pub namespace: Option<String>,
    /// What this process does.
    pub role: Role,
    /// Faults injected into the run.
    pub faults: Faults,
    /// Where the saga workers take their events from.
    pub saga_feed: SagaFeed,
    /// Abort the process (no clean shutdown) once this many orders are placed (`--crash-after`).
    pub crash_after: Option<usize>,
    /// Also wait until every order in the store (earlier runs' too) is final, by the order summary.
    pub await_all_orders: bool,
    /// Serve the live dashboard on this address (`--serve 127.0.0.1:8080`; port 0 picks one).
    pub serve: Option<String>,
    /// Place one order every this long instead of all at once (`--pace-ms`), to watch a run live.
    pub pace: Option<Duration>,
}

/// Where saga workers take their events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaFeed {
    /// The store when it is durable and the bus is not (in-memory, Zenoh): a restart loses
    /// nothing. The bus otherwise.
    Auto,
    /// The bus (consumer group `saga-checkout`).
    Bus,
    /// The event store, from the group's checkpoint.
    Store,
}

impl FromStr for SagaFeed {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, AppError> {
        match s {
            "auto" => Ok(SagaFeed::Auto),
            "bus" => Ok(SagaFeed::Bus),
            "store" => Ok(SagaFeed::Store),
            other => Err(AppError::Setup(format!("unknown --saga-feed {other:?}: use auto, bus or store"))),
        }
    }
}

impl Config {
    /// Whether saga workers read the store (see [`SagaFeed::Auto`]).
    pub fn sagas_from_store(&self) -> bool {
        match self.saga_feed {
            SagaFeed::Store => true,
            SagaFeed::Bus => false,
            SagaFeed::Auto => self.store != StoreUrl::Memory && matches!(self.bus, BusUrl::Memory { .. } | BusUrl::Zenoh { .. }),
        }
    }
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
            slow_payments_every: 0,
            payment_timeout: Duration::from_secs(30),
            seed: 42,
            skus: 8,
            concurrency: 16,
            workers: 2,
            timeout: Duration::from_secs(60),
            store: StoreUrl::Memory,
            bus: BusUrl::memory(),
            namespace: None,
            role: Role::All,
            faults: Faults::default(),
            saga_feed: SagaFeed::Auto,
            crash_after: None,
            await_all_orders: false,
            serve: None,
            pace: None,
        }
    }
}
