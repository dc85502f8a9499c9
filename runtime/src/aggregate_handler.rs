//! [`AggregateHandler`]: handles commands for a typed [`Aggregate`] whose state lives in its event
//! stream.
//!
//! For each command: load the instance (snapshot, then the events after it, each folded in with
//! [`Aggregate::apply`]); if the command's id already caused events in the stream (a redelivered
//! command), answer [`CommandOutcome::Duplicate`]; otherwise [`Aggregate::handle`] decides. A
//! rejection is returned as [`DispatchError::Rejected`] holding the aggregate's typed error
//! (read it with [`DispatchError::rejection`]); events are appended with the expected version that
//! was loaded, published to [`Aggregate::topic`] through the outbox, with ids derived from the
//! command id (so a retried command is an idempotent append). On a concurrency conflict the handler
//! reloads and decides again, up to a bound. Nothing is kept in memory between commands, so any
//! process can handle any command.

use std::sync::Arc;

use chrono::Utc;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    Aggregate, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, DomainEvent, Effect, EventMetadata, EventStore, EventStoreError, Rejection,
    Snapshot, StreamId, Version,
};
use tracing::Instrument;

use crate::executor::{ConflictPolicy, EffectFailure, ExecutionScope, Executor, Feedback};
use crate::metrics::CommandMetrics;

/// Handles commands for aggregate `A`. Register it with the [`crate::CommandRouter`] of the
/// runtimes that dispatch to it ([`AggregateHandler::register`]).
pub struct AggregateHandler<A: Aggregate> {
    aggregate: A,
    env: A::Environment,
    store: Arc<dyn EventStore>,
    executor: Executor,
    max_attempts: u32,
    metrics: CommandMetrics,
}

/// An instance as loaded from its stream.
#[derive(Debug)]
pub struct Loaded<S> {
    /// The state.
    pub state: S,
    /// The stream version it reflects.
    pub version: Version,
    /// The version of the snapshot it started from, if any.
    pub snapshot_version: Option<Version>,
    /// Whether the command id being handled already caused events in the stream.
    pub already_handled: bool,
}

/// Why a command sent with [`AggregateHandler::send`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a business rule).
    #[error("command rejected: {0}")]
    Rejected(E),
    /// Storage, conflicts, an invalid command: everything but a business rejection.
    #[error(transparent)]
    Failed(DispatchError),
}

impl<A: Aggregate> AggregateHandler<A> {
    /// A handler loading from `executor`'s store and appending through `executor` (publishing to
    /// its bus).
    ///
    /// # Panics
    /// If `executor` has no event store: an aggregate cannot live without one.
    pub fn new(aggregate: A, env: A::Environment, executor: Executor) -> Self {
        let store = Arc::clone(executor.store().expect("an AggregateHandler needs an executor with an event store: Executor::builder().store(..)"));
        Self { aggregate, env, store, executor, max_attempts: 16, metrics: CommandMetrics::new(A::AGGREGATE_TYPE) }
    }

    /// How many times a command is decided again after concurrency conflicts (default 16).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Puts the handler behind an `Arc` and registers it with the executor's router for
    /// `A::Command`.
    pub fn register(self) -> Result<Arc<Self>, crate::router::RouterError> {
        let handler = Arc::new(self);
        handler.executor.commands().register::<A::Command>(Arc::clone(&handler) as Arc<dyn CommandHandler>)?;
        Ok(handler)
    }

    /// The stream of instance `id`.
    pub fn stream_id(id: &str) -> Result<StreamId, composable_rust_core::StreamIdError> {
        StreamId::for_instance(A::AGGREGATE_TYPE, id)
    }

    /// Loads instance `id` from its snapshot and stream. `handled_command` is the id whose prior
    /// handling should be detected.
    pub async fn load(&self, id: &str, handled_command: Option<&str>) -> Result<Loaded<A::State>, DispatchError> {
        let stream = Self::stream_id(id).map_err(|e| Self::invalid(e.to_string()))?;
        let mut state = A::initial_state(id);
        let mut version = Version::INITIAL;
        let mut snapshot_version = None;
        if A::encode_state(&state).is_some() {
            if let Some(snap) = self.store.load_snapshot(&stream).await.map_err(Self::store_error)? {
                state = A::decode_state(&snap.state).map_err(|e| Self::corrupt(&stream, &e))?;
                version = snap.version;
                snapshot_version = Some(snap.version);
            }
        }
        let events = read_stream_to_end(&*self.store, &stream, version.next()).await.map_err(Self::store_error)?;
        let mut already_handled = false;
        for stored in &events {
            let event = A::Event::from_serialized(stored).map_err(|e| Self::corrupt(&stream, &e))?;
            A::apply(&mut state, &event);
            version = stored.stream_version.unwrap_or(version.next());
            if handled_command.is_some() && stored.metadata.causation_id.as_deref() == handled_command {
                already_handled = true;
            }
        }
        Ok(Loaded { state, version, snapshot_version, already_handled })
    }

    /// Handles `command` as a new command (a fresh id) and returns the typed outcome.
    pub async fn send(&self, command: A::Command) -> Result<CommandOutcome, AggregateError<A::Error>> {
        let envelope = CommandEnvelope {
            command_id: uuid::Uuid::new_v4(),
            correlation_id: None,
            causation_id: None,
            command: composable_rust_core::AnyCommand::new(command.clone()),
        };
        let id = Self::checked_id(&command).map_err(AggregateError::Failed)?;
        let span = tracing::info_span!("command", aggregate = A::AGGREGATE_TYPE, id = %id, command_id = %envelope.command_id);
        let outcome = self.handle_command(&envelope, &command, &id).instrument(span).await;
        self.metrics.count(&outcome, |e| matches!(e, AggregateError::Rejected(_)));
        outcome
    }

    fn checked_id(command: &A::Command) -> Result<String, DispatchError> {
        let id = A::aggregate_id(command).to_string();
        if id.is_empty() {
            return Err(Self::invalid(format!("{command:?} names no {} (empty id)", A::AGGREGATE_TYPE)));
        }
        Ok(id)
    }

    fn target() -> String {
        A::AGGREGATE_TYPE.to_string()
    }

    fn invalid(reason: String) -> DispatchError {
        DispatchError::InvalidCommand { target: Self::target(), reason }
    }

    fn store_error(source: EventStoreError) -> DispatchError {
        DispatchError::Store { target: Self::target(), source }
    }

    fn corrupt(stream: &StreamId, e: &composable_rust_core::CodecError) -> DispatchError {
        Self::store_error(EventStoreError::Corrupt { reason: format!("stream {stream}: {e}") })
    }

    fn map_failure(failure: EffectFailure) -> DispatchError {
        match failure {
            EffectFailure::Store(source) => DispatchError::Store { target: Self::target(), source },
            EffectFailure::Bus(source) => DispatchError::Bus { target: Self::target(), source },
            EffectFailure::Dispatch(e) => e,
            other => DispatchError::Failed { target: Self::target(), reason: other.to_string(), retryable: other.is_retryable() },
        }
    }

    /// Saves a snapshot when snapshots are enabled and `snapshot_every` events were appended since
    /// the last one. Loads again so the snapshot reflects exactly the stored version.
    async fn maybe_snapshot(&self, id: &str) {
        if A::encode_state(&A::initial_state(id)).is_none() {
            return;
        }
        let (Ok(stream), Ok(loaded)) = (Self::stream_id(id), self.load(id, None).await) else { return };
        if loaded.version.0 - loaded.snapshot_version.unwrap_or_default().0 < A::snapshot_every() {
            return;
        }
        match A::encode_state(&loaded.state) {
            Some(Ok(state)) => {
                let snapshot = Snapshot { stream_id: stream, version: loaded.version, state, taken_at: Utc::now() };
                if let Err(e) = self.store.save_snapshot(snapshot).await {
                    tracing::warn!(error = %e, "could not save snapshot");
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "could not encode snapshot"),
            None => {}
        }
    }

    async fn handle_command(&self, envelope: &CommandEnvelope, command: &A::Command, id: &str) -> Result<CommandOutcome, AggregateError<A::Error>> {
        use AggregateError::Failed;
        let stream = Self::stream_id(id).map_err(|e| Failed(Self::invalid(e.to_string())))?;
        let cause = envelope.command_id.to_string();
        for attempt in 1..=self.max_attempts {
            let loaded = self.load(id, Some(&cause)).await.map_err(Failed)?;
            if loaded.already_handled {
                tracing::debug!("command already handled, skipping");
                return Ok(CommandOutcome::Duplicate);
            }
            let mut state = loaded.state;
            let events = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.aggregate.handle(&state, command.clone(), &self.env)))
                .map_err(|panic| Failed(DispatchError::Panicked { target: Self::target(), message: crate::executor::panic_message(&*panic) }))?
                .map_err(AggregateError::Rejected)?;
            if events.is_empty() {
                return Ok(CommandOutcome::HANDLED);
            }
            let mut serialized = Vec::with_capacity(events.len());
            for e in &events {
                let metadata = envelope.correlation_id.as_ref().map_or_else(EventMetadata::now, |c| EventMetadata::now().with_correlation_id(c.clone()));
                serialized.push(e.to_serialized(Some(metadata)).map_err(|e| Failed(Self::invalid(format!("cannot encode event: {e}"))))?);
                A::apply(&mut state, e);
            }
            let mut append = Effect::append(stream.clone(), composable_rust_core::ExpectedVersion::from_loaded(loaded.version), serialized);
            if let Some(topic) = A::topic() {
                append = append.publish_to(topic);
            }
            let mut effects: Vec<Effect<std::convert::Infallible>> = vec![append.into()];
            effects.extend(self.aggregate.react(&state, &events, &self.env));
            let feedback: Feedback<std::convert::Infallible> = Arc::new(|_, never| match never {});
            let mut scope = ExecutionScope::caused_by(envelope.command_id).with_conflict_policy(ConflictPolicy::Abort).caller_retries();
            if let Some(c) = &envelope.correlation_id {
                scope = scope.with_correlation_id(c.clone());
            }
            match self.executor.run(effects, &feedback, &scope).await {
                Ok(report) => {
                    self.maybe_snapshot(id).await;
                    return Ok(CommandOutcome::Handled { position: report.last_position });
                }
                Err(f) if f.is_conflict() => tracing::debug!(attempt, "concurrency conflict, reloading"),
                Err(f) => return Err(Failed(Self::map_failure(f))),
            }
        }
        Err(Failed(DispatchError::TooManyConflicts { target: Self::target(), stream: stream.to_string(), attempts: self.max_attempts }))
    }
}

#[async_trait::async_trait]
impl<A: Aggregate> CommandHandler for AggregateHandler<A> {
    fn name(&self) -> &str {
        A::AGGREGATE_TYPE
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let command = envelope.command.downcast_ref::<A::Command>().ok_or_else(|| DispatchError::WrongCommandType {
            target: Self::target(),
            expected: std::any::type_name::<A::Command>(),
            got: envelope.command.type_name(),
        })?;
        let id = Self::checked_id(command)?;
        let span = tracing::info_span!("command", aggregate = A::AGGREGATE_TYPE, id = %id, command_id = %envelope.command_id);
        let outcome = self.handle_command(envelope, command, &id).instrument(span).await;
        self.metrics.count(&outcome, |e| matches!(e, AggregateError::Rejected(_)));
        outcome.map_err(|e| match e {
            AggregateError::Rejected(error) => DispatchError::Rejected { target: Self::target(), error: Rejection(Arc::new(error)) },
            AggregateError::Failed(e) => e,
        })
    }
}
