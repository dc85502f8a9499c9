//! # composable-rust-testing
//!
//! Everything to test reducers, sagas and backends deterministically:
//!
//! - [`TestStore`]: exhaustive state assertions, received actions, recorded effects, virtual time;
//! - [`TestClock`]: virtual time for `Delay`, timeouts and backoff;
//! - [`SagaScenario`]: given/when/then on a saga's returned effects, without I/O;
//! - [`AggregateScenario`]: given events, when a command, then events or a typed rejection;
//! - [`InMemoryEventStore`] and [`InMemoryEventBus`]: real backends (same guarantees, proven by the
//!   same conformance suites as the durable ones), living in process memory;
//! - [`conformance`]: the suites every backend runs.

pub mod aggregate_scenario;
pub mod clock;
pub mod conformance;
pub mod diff;
pub mod in_memory_bus;
pub mod in_memory_store;
pub mod saga_scenario;
pub mod test_store;

pub use aggregate_scenario::{AggregateOutcome, AggregateScenario};
pub use clock::TestClock;
pub use diff::debug_diff;
pub use in_memory_bus::{BusStats, InMemoryEventBus};
pub use in_memory_store::InMemoryEventStore;
pub use saga_scenario::{Outcome, SagaScenario};
pub use test_store::TestStore;

/// The reducers guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/reducers-and-effects.md")]
#[cfg(doctest)]
pub struct ReducersGuideDoctests;

/// The sagas guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/sagas.md")]
#[cfg(doctest)]
pub struct SagasGuideDoctests;

/// The testing guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/testing.md")]
#[cfg(doctest)]
pub struct TestingGuideDoctests;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
