//! # composable-rust-testing
//!
//! Everything to test reducers, sagas and backends deterministically:
//!
//! - [`TestStore`]: exhaustive state assertions, received actions, recorded effects, virtual time;
//! - [`TestClock`]: virtual time for `Delay`, timeouts and backoff;
//! - [`SagaScenario`]: given/when/then on a saga's returned effects, without I/O;
//! - [`InMemoryEventStore`] and [`InMemoryEventBus`]: real backends (same guarantees, proven by the
//!   same conformance suites as the durable ones), living in process memory;
//! - [`conformance`]: the suites every backend runs.

pub mod clock;
pub mod conformance;
pub mod diff;
pub mod in_memory_bus;
pub mod in_memory_store;
pub mod saga_scenario;
pub mod test_store;

pub use clock::TestClock;
pub use diff::debug_diff;
pub use in_memory_bus::{BusStats, InMemoryEventBus};
pub use in_memory_store::InMemoryEventStore;
pub use saga_scenario::{Outcome, SagaScenario};
pub use test_store::TestStore;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
