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
//! reloads and decides again, up to a bound. Commands for one instance take turns within a process
//! (load, decide and append under a per-instance lock; [`Aggregate::react`]'s effects run after the
//! turn), so conflicts come only from other processes.
//!
//! The instances used most recently are kept in memory ([`AggregateHandler::with_cache_capacity`],
//! default 10,000): the next command for one decides on the kept state without reading the stream,
//! and its append still expects the kept version, so a stream another process wrote to meanwhile
//! answers with a conflict and the handler reloads and decides again, as without the cache. A
//! kept instance remembers the command ids its events came from since its last snapshot (what a
//! load would scan), so a redelivered command is still recognised. Any process can handle any
//! command.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    Aggregate, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, DomainEvent, Effect, EventMetadata, EventStore, EventStoreError, Rejection,
    Snapshot, StreamId, Version,
};
use tracing::Instrument;

use crate::executor::{ConflictPolicy, EffectFailure, ExecutionScope, Executor, Feedback};
use crate::instance_lock::InstanceLocks;
use crate::kept::{DEFAULT_KEPT, Kept};
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
    turns: InstanceLocks,
    kept: Kept<Instance<A::State>>,
}

/// An instance as the handler keeps it between commands.
struct Instance<S> {
    state: S,
    version: Version,
    snapshot_version: Option<Version>,
    /// Causation ids (command ids) of the events after the snapshot.
    causes: HashSet<Box<str>>,
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
        Self {
            aggregate,
            env,
            store,
            executor,
            max_attempts: 16,
            metrics: CommandMetrics::new(A::AGGREGATE_TYPE),
            turns: InstanceLocks::default(),
            kept: Kept::new(DEFAULT_KEPT),
        }
    }

    /// How many times a command is decided again after concurrency conflicts (default 16).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How many instances are kept in memory between commands (default 10,000; 0 keeps none, so
    /// every command loads its instance from the store). The least recently used goes first.
    #[must_use]
    pub fn with_cache_capacity(mut self, instances: usize) -> Self {
        self.kept = Kept::new(instances);
        self
    }

    /// Instances kept in memory now.
    pub fn cached_instances(&self) -> usize {
        self.kept.len()
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
    /// handling should be detected. Always reads the store (the cache is not consulted).
    pub async fn load(&self, id: &str, handled_command: Option<&str>) -> Result<Loaded<A::State>, DispatchError> {
        let instance = self.load_instance(id).await?;
        let already_handled = handled_command.is_some_and(|c| instance.causes.contains(c));
        Ok(Loaded { state: instance.state, version: instance.version, snapshot_version: instance.snapshot_version, already_handled })
    }

    async fn load_instance(&self, id: &str) -> Result<Instance<A::State>, DispatchError> {
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
        let mut causes = HashSet::new();
        for stored in &events {
            let event = A::Event::from_serialized(stored).map_err(|e| Self::corrupt(&stream, &e))?;
            A::apply(&mut state, &event);
            version = stored.stream_version.unwrap_or(version.next());
            if let Some(cause) = &stored.metadata.causation_id {
                causes.insert(cause.as_str().into());
            }
        }
        Ok(Instance { state, version, snapshot_version, causes })
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

    /// Saves a snapshot of `state` at `version` when snapshots are enabled and `snapshot_every`
    /// events were appended since the last one. `state` is the loaded state with the command's
    /// events applied, and the append that stored them expected the loaded version, so it is
    /// exactly the stored state at `version`: no second load.
    /// Whether a snapshot was saved.
    async fn maybe_snapshot(&self, stream: &StreamId, state: &A::State, version: Version, snapshot_version: Option<Version>) -> bool {
        if version.0 - snapshot_version.unwrap_or_default().0 < A::snapshot_every() {
            return false;
        }
        match A::encode_state(state) {
            Some(Ok(encoded)) => {
                let snapshot = Snapshot { stream_id: stream.clone(), version, state: encoded, taken_at: Utc::now() };
                match self.store.save_snapshot(snapshot).await {
                    Ok(()) => return true,
                    Err(e) => tracing::warn!(error = %e, "could not save snapshot"),
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "could not encode snapshot"),
            None => {}
        }
        false
    }

    async fn handle_command(&self, envelope: &CommandEnvelope, command: &A::Command, id: &str) -> Result<CommandOutcome, AggregateError<A::Error>> {
        use AggregateError::Failed;
        let stream = Self::stream_id(id).map_err(|e| Failed(Self::invalid(e.to_string())))?;
        let cause = envelope.command_id.to_string();
        for attempt in 1..=self.max_attempts {
            let turn = self.turns.turn(id).await;
            // A retry after a conflict reloads: the stream moved on without this process.
            let kept = self.kept.take(id).filter(|_| attempt == 1);
            let mut instance = match kept {
                Some(instance) => instance,
                None => self.load_instance(id).await.map_err(Failed)?,
            };
            if instance.causes.contains(cause.as_str()) {
                tracing::debug!("command already handled, skipping");
                self.kept.keep(id, instance);
                return Ok(CommandOutcome::Duplicate);
            }
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.aggregate.handle(&instance.state, command.clone(), &self.env)));
            let events = match decided {
                Ok(Ok(events)) => events,
                Ok(Err(rejection)) => {
                    self.kept.keep(id, instance);
                    return Err(AggregateError::Rejected(rejection));
                }
                Err(panic) => {
                    self.kept.keep(id, instance);
                    return Err(Failed(DispatchError::Panicked { target: Self::target(), message: crate::executor::panic_message(&*panic) }));
                }
            };
            if events.is_empty() {
                self.kept.keep(id, instance);
                return Ok(CommandOutcome::HANDLED);
            }
            let loaded_version = instance.version;
            let mut serialized = Vec::with_capacity(events.len());
            for e in &events {
                let metadata = envelope.correlation_id.as_ref().map_or_else(EventMetadata::now, |c| EventMetadata::now().with_correlation_id(c.clone()));
                serialized.push(e.to_serialized(Some(metadata)).map_err(|e| Failed(Self::invalid(format!("cannot encode event: {e}"))))?);
                // From here the instance is not kept unless the append lands: it holds events
                // the store may not have.
                A::apply(&mut instance.state, e);
            }
            let mut append = Effect::append(stream.clone(), composable_rust_core::ExpectedVersion::from_loaded(loaded_version), serialized);
            if let Some(topic) = A::topic() {
                append = append.publish_to(topic);
            }
            let feedback: Feedback<std::convert::Infallible> = Arc::new(|_, never| match never {});
            let mut scope = ExecutionScope::caused_by(envelope.command_id).with_conflict_policy(ConflictPolicy::Abort).caller_retries();
            if let Some(c) = &envelope.correlation_id {
                scope = scope.with_correlation_id(c.clone());
            }
            let appended: Vec<Effect<std::convert::Infallible>> = vec![append.into()];
            let report = match self.executor.run(appended, &feedback, &scope).await {
                Ok(report) => report,
                Err(f) if f.is_conflict() => {
                    tracing::debug!(attempt, "concurrency conflict, reloading");
                    continue;
                }
                Err(f) => return Err(Failed(Self::map_failure(f))),
            };
            instance.version = Version(loaded_version.0 + events.len() as u64);
            instance.causes.insert(cause.as_str().into());
            if self.maybe_snapshot(&stream, &instance.state, instance.version, instance.snapshot_version).await {
                // As a load from the new snapshot would: only later events' causes.
                instance.snapshot_version = Some(instance.version);
                instance.causes.clear();
            }
            let reactions: Vec<Effect<std::convert::Infallible>> = self.aggregate.react(&instance.state, &events, &self.env);
            self.kept.keep(id, instance);
            // The reactions may dispatch to this very instance: they run after its turn.
            drop(turn);
            if reactions.is_empty() {
                return Ok(CommandOutcome::Handled { position: report.last_position });
            }
            return match self.executor.run(reactions, &feedback, &scope).await {
                Ok(more) => Ok(CommandOutcome::Handled { position: more.last_position.or(report.last_position) }),
                Err(f) => Err(Failed(Self::map_failure(f))),
            };
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
