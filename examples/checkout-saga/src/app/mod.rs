//! The checkout scenario as an application, split by concern: what to run ([`config`]), what it
//! runs on ([`wiring`]), what it does ([`scenario`]), how it is checked ([`verify`]), and the faults
//! it can be put through ([`faults`]).

pub mod config;
pub mod faults;
pub mod scenario;
pub mod verify;
pub mod wiring;

pub use config::{AppError, BusUrl, Config, DISCONTINUED_SKU, Role, SagaFeed, StoreUrl, parse_bus, parse_store};
pub use faults::Faults;
pub use scenario::{Expected, PlannedOrder, RebuildOutput, Report, WorkerReport, plan_orders, rebuild_projections, run, run_serving, run_worker};
