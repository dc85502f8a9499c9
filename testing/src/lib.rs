//! # composable-rust-testing
//!
//! Everything to test reducers, sagas and backends deterministically:
//!
//! - [`TestStore`]: exhaustive state assertions, received actions, recorded effects, virtual time;
//! - [`TestClock`]: virtual time for `Delay`, timeouts and backoff;
//! - [`SagaScenario`]: given/when/then on a saga's returned effects, without I/O;
//! - [`AggregateScenario`]: given events, when a command, then events or a typed rejection;
//! - [`conformance`]: the suites every backend runs.
//!
//! [`InMemoryEventStore`] and [`InMemoryEventBus`] (with [`BusStats`], and the modules
//! [`in_memory_store`] and [`in_memory_bus`]) are re-exported from `composable-rust-memory`, where
//! they live, so that tests written against this crate keep compiling. They are real backends (the
//! same conformance suites as the durable ones prove their guarantees); production code should
//! depend on `composable-rust-memory` or the `composable-rust` facade, not on this test crate.

pub mod aggregate_scenario;
pub mod bench_results;
pub mod clock;
pub mod conformance;
pub mod diff;
pub mod replay;
pub mod saga_scenario;
pub mod test_store;

pub use aggregate_scenario::{AggregateOutcome, AggregateScenario};
pub use clock::TestClock;
/// Re-exported from `composable-rust-memory` for compatibility: the in-memory bus's module.
pub use composable_rust_memory::bus as in_memory_bus;
/// Re-exported from `composable-rust-memory` for compatibility: the in-memory store's module.
pub use composable_rust_memory::store as in_memory_store;
pub use composable_rust_memory::{BusStats, InMemoryEventBus, InMemoryEventStore};
pub use diff::debug_diff;
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

/// The composition guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/composition.md")]
#[cfg(doctest)]
pub struct CompositionGuideDoctests;

/// The testing guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/testing.md")]
#[cfg(doctest)]
pub struct TestingGuideDoctests;

/// The projections guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/projections.md")]
#[cfg(doctest)]
pub struct ProjectionsGuideDoctests;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
