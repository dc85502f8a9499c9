//! # composable-rust-runtime
//!
//! Runs reducers: the [`Store`] (one FIFO action queue, effects executed in order by the
//! [`Executor`]), the [`AggregateHandler`] (load from the stream, decide, append with the expected
//! version, retry on conflict), the [`SagaRunner`] (bus deliveries to saga steps, acknowledged after
//! their effects succeeded, de-duplicated by event id) and the [`outbox`] relay.
//!
//! The data path, one file per step: [`store`] → reducer → [`executor`] (effects in order) →
//! event store (+ outbox) → bus → [`saga_runner`] → acknowledgement.

pub mod aggregate_handler;
pub mod cancellation;
pub mod clock;
pub mod dead_letter;
pub mod dual_bus;
pub mod executor;
mod instance_lock;
mod kept;
pub mod lanes;
pub mod metrics;
pub mod outbox;
pub mod projection;
pub mod retry;
pub mod router;
pub mod saga_runner;
pub mod store;
pub mod subscription;
pub mod trace_context;
pub mod tracker;

pub use aggregate_handler::{AggregateError, AggregateHandler};
pub use clock::SystemClock;
pub use dead_letter::{DeadLetter, DeadLetterSink, InMemoryDeadLetters};
pub use dual_bus::{DualEventBus, DualMode, SecondaryPolicy, Side};
pub use executor::{ConflictPolicy, EffectFailure, EffectObserver, EffectRecord, ExecutionScope, Executor, ExecutorBuilder, Feedback, RunReport};
pub use projection::{Projection, ProjectionError, ProjectionHandle, ProjectionReader, ProjectionRunner, ProjectionStatus, View, WaitError};
pub use retry::RetryPolicy;
pub use router::{CommandRouter, RouterError};
pub use saga_runner::{SagaError, SagaRunner, SagaRunnerHandle, StepOutcome};
pub use store::{EffectHandle, Store, StoreError};
pub use subscription::{StoreSubscription, SubscriptionStatus};
pub use tracker::Tracker;
pub mod decorators;
pub use decorators::{BusCounters, BusObserver, CountingBus, NamespacedBus, ObservedBus};
