//! [`SagaRunner`]: feeds bus deliveries to a [`Saga`], executes its effects, and acknowledges each
//! delivery only after they succeeded.
//!
//! Guarantees:
//! - each saga instance (keyed by the correlation id the saga's `decode` returns) lives in the stream
//!   `saga.{NAME}-{instance}`, holding the actions the saga reduced; any worker rebuilds it by replay;
//! - a step is recorded (appended with the expected version and an inbox mark for the event)
//!   **before** its effects run, with an id derived from the delivered event's id: a redelivered event
//!   is found in the stream (and refused by the inbox) and not applied to the state again. Its effects are derived again from the state before the step and executed
//!   again (the crash may have happened before they ran); the commands they dispatch carry the same
//!   ids as the first time, so aggregate handlers skip those already handled;
//! - concurrent workers on one instance are serialised by the append's expected version: the loser
//!   reloads and decides again;
//! - unknown event types are skipped with a warning and acknowledged; undecodable payloads are
//!   dead-lettered and acknowledged; retryable failures are negatively acknowledged (redelivered) up
//!   to a bound, then dead-lettered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    AppendRequest, CodecError, EventBus, EventBusError, EventMetadata, EventStore, EventStoreError, ExpectedVersion, Saga, SerializedEvent, StreamId,
    StreamIdError, SubscribeOptions, Version, decode_payload, encode_payload,
};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::dead_letter::dead_letter;
use crate::executor::{EffectFailure, ExecutionScope, Executor, Feedback};

/// Namespace for step ids (UUID v5), so that the same event gives the same step id in every process.
const SAGA_STEP_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_4a3e_8f7b_4c59_9d0e_52b1_0c7e_a001);

/// Event type of the records in a saga instance stream.
pub const SAGA_STEP_EVENT_TYPE: &str = "SagaStep.v1";

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Reduced, recorded, effects executed.
    Applied,
    /// The event had been recorded before (redelivery): state untouched, effects executed again
    /// (idempotently).
    Duplicate,
    /// The saga does not handle this event type.
    Skipped,
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    /// The event is of a type the saga handles, but its payload cannot be decoded.
    #[error("saga {saga}: cannot decode event {event_type} {event_id}: {source}")]
    Undecodable {
        /// Saga name.
        saga: &'static str,
        /// Event type.
        event_type: String,
        /// Event id.
        event_id: Uuid,
        /// Why.
        source: CodecError,
    },
    /// The saga returned an instance id that is not a valid stream id.
    #[error("saga {saga}: invalid instance id: {source}")]
    InvalidInstance {
        /// Saga name.
        saga: &'static str,
        /// Why.
        source: StreamIdError,
    },
    /// A recorded step could not be decoded (the action type changed incompatibly).
    #[error("saga {saga}: recorded step {record_id} in {stream} cannot be decoded: {source}; keep old action variants decodable")]
    CorruptRecord {
        /// Saga name.
        saga: &'static str,
        /// Stream.
        stream: StreamId,
        /// Record id.
        record_id: Uuid,
        /// Why.
        source: CodecError,
    },
    /// The event store failed.
    #[error("saga {saga}: {source}")]
    Store {
        /// Saga name.
        saga: &'static str,
        /// The error.
        source: EventStoreError,
    },
    /// An effect of the step failed and the saga did not handle the failure.
    #[error("saga {saga}: effect failed: {source}")]
    Effect {
        /// Saga name.
        saga: &'static str,
        /// The failure.
        source: EffectFailure,
    },
    /// Kept conflicting with other workers on the same instance.
    #[error("saga {saga}: gave up after {attempts} concurrency conflicts on {stream}")]
    TooManyConflicts {
        /// Saga name.
        saga: &'static str,
        /// Stream.
        stream: StreamId,
        /// Attempts.
        attempts: u32,
    },
    /// Subscribing failed.
    #[error("saga {saga}: {source}")]
    Bus {
        /// Saga name.
        saga: &'static str,
        /// The error.
        source: EventBusError,
    },
}

impl SagaError {
    /// Whether redelivering the event later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SagaError::Store { source, .. } => source.is_retryable(),
            SagaError::Effect { source, .. } => match source {
                EffectFailure::Store(e) => e.is_retryable() || matches!(e, EventStoreError::ConcurrencyConflict { .. }),
                EffectFailure::Bus(e) => e.is_retryable(),
                EffectFailure::Dispatch(e) => e.is_retryable(),
            },
            SagaError::TooManyConflicts { .. } | SagaError::Bus { .. } => true,
            SagaError::Undecodable { .. } | SagaError::InvalidInstance { .. } | SagaError::CorruptRecord { .. } => false,
        }
    }
}

/// Counters of a running saga worker.
#[derive(Debug, Default)]
pub struct SagaStats {
    applied: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    redelivery_requests: AtomicU64,
    dead_lettered: AtomicU64,
    lagged_events: AtomicU64,
}

/// A snapshot of [`SagaStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SagaStatsSnapshot {
    /// Steps applied.
    pub applied: u64,
    /// Redeliveries recognised.
    pub duplicates: u64,
    /// Events of types the saga ignores.
    pub skipped: u64,
    /// Deliveries negatively acknowledged for redelivery.
    pub redelivery_requests: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Events the bus reported as missed by this worker.
    pub lagged_events: u64,
}

impl SagaStats {
    /// Current values.
    pub fn snapshot(&self) -> SagaStatsSnapshot {
        SagaStatsSnapshot {
            applied: self.applied.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            redelivery_requests: self.redelivery_requests.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            lagged_events: self.lagged_events.load(Ordering::Relaxed),
        }
    }
}

/// Runs one saga worker. Several workers (in one or many processes) may share the consumer group.
pub struct SagaRunner<S: Saga> {
    saga: S,
    env: S::Environment,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    executor: Executor,
    group: String,
    max_attempts: u32,
    max_deliveries: u32,
    stats: Arc<SagaStats>,
}

/// Controls a spawned saga worker.
pub struct SagaRunnerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<SagaStats>,
}

impl SagaRunnerHandle {
    /// Current counters.
    pub fn stats(&self) -> SagaStatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops taking deliveries, lets the one in hand finish (and be acknowledged), and waits.
    pub async fn shutdown(self) -> SagaStatsSnapshot {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "saga worker task failed");
        }
        self.stats.snapshot()
    }
}

impl<S: Saga> SagaRunner<S> {
    /// A worker in consumer group `saga-{NAME}`.
    pub fn new(saga: S, env: S::Environment, store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>, executor: Executor) -> Self {
        Self { saga, env, store, bus, executor, group: format!("saga-{}", S::NAME), max_attempts: 16, max_deliveries: 5, stats: Arc::default() }
    }

    /// Uses another consumer group name.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// How many times a delivery is attempted before it is dead-lettered (default 5).
    #[must_use]
    pub fn with_max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The stream of an instance.
    pub fn instance_stream(instance_id: &str) -> Result<StreamId, SagaError> {
        StreamId::for_instance(&format!("saga.{}", S::NAME), instance_id).map_err(|source| SagaError::InvalidInstance { saga: S::NAME, source })
    }

    /// The step id of an event: the same in every process.
    pub fn step_id(event_id: Uuid) -> Uuid {
        Uuid::new_v5(&SAGA_STEP_NAMESPACE, format!("{}/{event_id}", S::NAME).as_bytes())
    }

    /// Rebuilds an instance's state from its stream.
    pub async fn load_instance(&self, instance_id: &str) -> Result<S::State, SagaError> {
        let stream = Self::instance_stream(instance_id)?;
        Ok(self.replay(instance_id, &stream, None).await?.state)
    }

    /// Handles one event: decode, load the instance, record the step, execute its effects.
    pub async fn handle_event(&self, event: &SerializedEvent) -> Result<StepOutcome, SagaError> {
        let Some(input) = self.decode(event)? else {
            tracing::warn!(event_type = %event.event_type, event_id = %event.event_id, saga = S::NAME, "event type not handled by this saga, skipped");
            return Ok(StepOutcome::Skipped);
        };
        let stream = Self::instance_stream(&input.instance_id)?;
        let step_id = Self::step_id(event.event_id);
        let mut action = Some(input.action);
        for attempt in 1..=self.max_attempts {
            let replayed = self.replay(&input.instance_id, &stream, Some(step_id)).await?;
            let mut state = replayed.state;
            let Some(a) = action.take().or_else(|| self.decode(event).ok().flatten().map(|i| i.action)) else {
                return Ok(StepOutcome::Skipped);
            };
            if replayed.found_step {
                tracing::debug!(step = %step_id, "event already applied; executing its effects again (idempotent)");
                let effects = self.saga.reduce(&mut state, a, &self.env).into_vec();
                self.execute(effects, step_id, &stream, &input.instance_id, &mut state).await?;
                return Ok(StepOutcome::Duplicate);
            }
            let metadata = EventMetadata::now().with_correlation_id(input.instance_id.clone()).with_causation_id(event.event_id.to_string());
            let payload =
                encode_payload(&a).map_err(|source| SagaError::CorruptRecord { saga: S::NAME, stream: stream.clone(), record_id: step_id, source })?;
            let record = SerializedEvent::new(SAGA_STEP_EVENT_TYPE, payload, Some(metadata)).with_event_id(step_id);
            let effects = self.saga.reduce(&mut state, a, &self.env).into_vec();
            // The inbox mark makes "this saga handled this event" part of the same atomic append.
            let request = AppendRequest::new(stream.clone(), ExpectedVersion::from_loaded(replayed.version), vec![record])
                .with_inbox(format!("saga.{}", S::NAME), event.event_id);
            match self.store.append(request).await {
                Ok(r) if r.duplicate => {
                    tracing::debug!(attempt, "another worker recorded this step concurrently; reloading");
                }
                Ok(_) => {
                    self.execute(effects, step_id, &stream, &input.instance_id, &mut state).await?;
                    return Ok(StepOutcome::Applied);
                }
                Err(EventStoreError::ConcurrencyConflict { .. } | EventStoreError::AlreadyProcessed { .. }) => {
                    tracing::debug!(attempt, "saga instance changed concurrently or the event was handled meanwhile; reloading");
                }
                Err(source) => return Err(SagaError::Store { saga: S::NAME, source }),
            }
        }
        Err(SagaError::TooManyConflicts { saga: S::NAME, stream, attempts: self.max_attempts })
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<composable_rust_core::SagaInput<S::Action>>, SagaError> {
        self.saga.decode(event).map_err(|source| SagaError::Undecodable {
            saga: S::NAME,
            event_type: event.event_type.clone(),
            event_id: event.event_id,
            source,
        })
    }

    async fn replay(&self, instance_id: &str, stream: &StreamId, stop_at: Option<Uuid>) -> Result<Replayed<S::State>, SagaError> {
        let records = read_stream_to_end(&*self.store, stream, Version(1)).await.map_err(|source| SagaError::Store { saga: S::NAME, source })?;
        let mut state = self.saga.initial_state(instance_id);
        let version = records.last().and_then(|r| r.stream_version).unwrap_or_default();
        for record in &records {
            if Some(record.event_id) == stop_at {
                return Ok(Replayed { state, version, found_step: true });
            }
            let action: S::Action = decode_payload(&record.data).map_err(|source| SagaError::CorruptRecord {
                saga: S::NAME,
                stream: stream.clone(),
                record_id: record.event_id,
                source,
            })?;
            // Replaying rebuilds state only; the effects were executed when the step was first handled.
            let _ = self.saga.reduce(&mut state, action, &self.env);
        }
        Ok(Replayed { state, version, found_step: false })
    }

    /// Executes a step's effects, then the actions they fed back (each recorded as a follow-up step
    /// with a derived id, so they too are applied once).
    async fn execute(
        &self,
        effects: Vec<composable_rust_core::Effect<S::Action>>,
        step_id: Uuid,
        stream: &StreamId,
        instance_id: &str,
        state: &mut S::State,
    ) -> Result<(), SagaError> {
        let fed_back: Arc<Mutex<Vec<S::Action>>> = Arc::default();
        let sink = Arc::clone(&fed_back);
        let feedback: Feedback<S::Action> = Arc::new(move |a| sink.lock().push(a));
        let mut pending = vec![(step_id, effects)];
        let mut follow_ups = 0u32;
        while let Some((id, effects)) = pending.pop() {
            let scope = ExecutionScope::deterministic(id, Some(id.to_string()));
            let result = self.executor.run(effects, &feedback, &scope).await;
            let next: Vec<S::Action> = std::mem::take(&mut *fed_back.lock());
            if let Err(source) = result {
                if next.is_empty() {
                    return Err(SagaError::Effect { saga: S::NAME, source });
                }
                tracing::info!(error = %source, "effect failed; the saga handles it with the action fed back");
            }
            for action in next {
                follow_ups += 1;
                let follow_id = Uuid::new_v5(&step_id, &follow_ups.to_be_bytes());
                let payload = encode_payload(&action).map_err(|source| SagaError::CorruptRecord {
                    saga: S::NAME,
                    stream: stream.clone(),
                    record_id: follow_id,
                    source,
                })?;
                let metadata = EventMetadata::now().with_correlation_id(instance_id).with_causation_id(step_id.to_string());
                let record = SerializedEvent::new(SAGA_STEP_EVENT_TYPE, payload, Some(metadata)).with_event_id(follow_id);
                let appended = self
                    .store
                    .append(AppendRequest::new(stream.clone(), ExpectedVersion::Any, vec![record]))
                    .await
                    .map_err(|source| SagaError::Store { saga: S::NAME, source })?;
                if appended.duplicate {
                    continue;
                }
                let effects = self.saga.reduce(state, action, &self.env).into_vec();
                pending.push((follow_id, effects));
            }
        }
        Ok(())
    }

    /// Subscribes (the subscription is live when this returns) and spawns the worker loop.
    pub async fn spawn(self) -> Result<SagaRunnerHandle, SagaError> {
        let topics = self.saga.topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let stream =
            self.bus.subscribe_with(&refs, SubscribeOptions::group(self.group.clone())).await.map_err(|source| SagaError::Bus { saga: S::NAME, source })?;
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::clone(&self.stats);
        let task = tokio::spawn(self.run_loop(stream, stop_rx).instrument(tracing::info_span!("saga", name = S::NAME)));
        Ok(SagaRunnerHandle { stop, task, stats })
    }

    async fn run_loop(self, mut stream: composable_rust_core::EventStream, mut stop: watch::Receiver<bool>) {
        loop {
            let item = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            match item {
                Ok(delivery) => self.handle_delivery(delivery).await,
                Err(EventBusError::Lagged { group, missed }) => {
                    self.stats.lagged_events.fetch_add(missed, Ordering::Relaxed);
                    dead_letter(
                        &**self.executor.dead_letters(),
                        format!("saga {} (group {group}) missed events", S::NAME),
                        format!("bus lagged, {missed} events missed"),
                        1,
                        None,
                    );
                }
                Err(EventBusError::Closed) => break,
                Err(e) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    dead_letter(&**self.executor.dead_letters(), format!("saga {} delivery", S::NAME), e.to_string(), 1, None);
                }
            }
        }
        tracing::info!("saga worker stopped");
    }

    async fn handle_delivery(&self, delivery: composable_rust_core::Delivery) {
        let event = delivery.event();
        let span = tracing::info_span!("saga_step", event_type = %event.event_type, event_id = %event.event_id, attempt = delivery.attempt());
        let outcome = self.handle_event(event).instrument(span).await;
        let ack = match outcome {
            Ok(o) => {
                let counter = match o {
                    StepOutcome::Applied => &self.stats.applied,
                    StepOutcome::Duplicate => &self.stats.duplicates,
                    StepOutcome::Skipped => &self.stats.skipped,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                delivery.ack().await
            }
            Err(e) if e.is_retryable() && delivery.attempt() < self.max_deliveries => {
                tracing::warn!(error = %e, attempt = delivery.attempt(), "saga step failed, asking for redelivery");
                self.stats.redelivery_requests.fetch_add(1, Ordering::Relaxed);
                self.executor.clock().sleep(self.executor.retry_policy().backoff_after(delivery.attempt())).await;
                delivery.nack().await
            }
            Err(e) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let event = delivery.event().clone();
                dead_letter(
                    &**self.executor.dead_letters(),
                    format!("saga {} step for {} {}", S::NAME, event.event_type, event.event_id),
                    e.to_string(),
                    delivery.attempt(),
                    Some(event),
                );
                delivery.ack().await
            }
        };
        if let Err(e) = ack {
            tracing::warn!(error = %e, "acknowledgement failed; the event may be delivered again (it will be recognised)");
        }
    }
}

struct Replayed<S> {
    state: S,
    version: Version,
    found_step: bool,
}
