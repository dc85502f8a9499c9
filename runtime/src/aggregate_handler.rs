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
//! rejection, or a decision with no events, is only answered on state loaded afresh (it appends
//! nothing a stale version could be caught by). A command whose events' ids (derived from the
//! command id) are stored already is answered [`CommandOutcome::Duplicate`], however long ago it
//! was handled. Any process can handle any command.

use std::collections::VecDeque;
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
    /// Causation ids (command ids) of its latest events, at most [`RECENT_CAUSES`]: a redelivered
    /// recent command is answered without deciding. Older ones are caught by the append (their
    /// events' ids, derived from the command id, are stored already).
    causes: RecentCauses,
}

/// Command ids a kept instance remembers.
const RECENT_CAUSES: usize = 64;

/// The latest causation ids, oldest first, at most [`RECENT_CAUSES`].
#[derive(Default)]
struct RecentCauses(VecDeque<Box<str>>);

impl RecentCauses {
    fn contains(&self, cause: &str) -> bool {
        self.0.iter().any(|c| &**c == cause)
    }

    fn push(&mut self, cause: &str) {
        if self.0.back().is_some_and(|last| &**last == cause) {
            return;
        }
        if self.0.len() == RECENT_CAUSES {
            self.0.pop_front();
        }
        self.0.push_back(cause.into());
    }
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
        let (instance, already_handled) = self.load_instance(id, handled_command).await?;
        Ok(Loaded { state: instance.state, version: instance.version, snapshot_version: instance.snapshot_version, already_handled })
    }

    /// The instance from the store, and whether `handled_command` caused any of the events read.
    async fn load_instance(&self, id: &str, handled_command: Option<&str>) -> Result<(Instance<A::State>, bool), DispatchError> {
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
        let mut causes = RecentCauses::default();
        let mut already_handled = false;
        for stored in &events {
            let event = A::Event::from_serialized(stored).map_err(|e| Self::corrupt(&stream, &e))?;
            A::apply(&mut state, &event);
            version = stored.stream_version.unwrap_or(version.next());
            if let Some(cause) = &stored.metadata.causation_id {
                already_handled |= handled_command == Some(cause.as_str());
                causes.push(cause);
            }
        }
        Ok((Instance { state, version, snapshot_version, causes }, already_handled))
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

    /// The instance loaded afresh, or (as `Err`) the instance if `cause` already caused events in
    /// what was read.
    async fn fresh_instance(&self, id: &str, cause: &str) -> Result<Result<Instance<A::State>, Instance<A::State>>, DispatchError> {
        let (instance, already_handled) = self.load_instance(id, Some(cause)).await?;
        if already_handled {
            tracing::debug!("command already handled, skipping");
            return Ok(Err(instance));
        }
        Ok(Ok(instance))
    }

    /// `handle`, with a panic caught (its message).
    fn decide(&self, state: &A::State, command: &A::Command) -> Result<Result<Vec<A::Event>, A::Error>, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.aggregate.handle(state, command.clone(), &self.env)))
            .map_err(|panic| crate::executor::panic_message(&*panic))
    }

    async fn handle_command(&self, envelope: &CommandEnvelope, command: &A::Command, id: &str) -> Result<CommandOutcome, AggregateError<A::Error>> {
        use AggregateError::Failed;
        let stream = Self::stream_id(id).map_err(|e| Failed(Self::invalid(e.to_string())))?;
        let cause = envelope.command_id.to_string();
        for attempt in 1..=self.max_attempts {
            let turn = self.turns.turn(id).await;
            // A retry after a conflict reloads: the stream moved on without this process.
            let (mut instance, kept) = if let Some(instance) = self.kept.take(id).filter(|_| attempt == 1) {
                (instance, true)
            } else {
                match self.fresh_instance(id, &cause).await.map_err(Failed)? {
                    Ok(instance) => (instance, false),
                    Err(handled) => {
                        self.kept.keep(id, handled);
                        return Ok(CommandOutcome::Duplicate);
                    }
                }
            };
            if instance.causes.contains(&cause) {
                tracing::debug!("command already handled, skipping");
                self.kept.keep(id, instance);
                return Ok(CommandOutcome::Duplicate);
            }
            let mut decided = self.decide(&instance.state, command);
            if kept
                && !matches!(&decided, Ok(Ok(events)) if !events.is_empty())
                && self.store.stream_version(&stream).await.map_err(|e| Failed(Self::store_error(e)))? != instance.version
            {
                // A refusal, an empty decision or a panic appends nothing, so nothing would catch a
                // stale kept state: they are answered on the stored state only.
                tracing::debug!("no events decided on a stale kept instance; deciding again on the stored state");
                instance = match self.fresh_instance(id, &cause).await.map_err(Failed)? {
                    Ok(instance) => instance,
                    Err(handled) => {
                        self.kept.keep(id, handled);
                        return Ok(CommandOutcome::Duplicate);
                    }
                };
                decided = self.decide(&instance.state, command);
            }
            let events = match decided {
                Ok(Ok(events)) => events,
                Ok(Err(rejection)) => {
                    self.kept.keep(id, instance);
                    return Err(AggregateError::Rejected(rejection));
                }
                Err(message) => {
                    self.kept.keep(id, instance);
                    return Err(Failed(DispatchError::Panicked { target: Self::target(), message }));
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
            // Derived before the append, as before the turns: a panicking `react` stores nothing.
            let reactions = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.aggregate.react(&instance.state, &events, &self.env)))
                .map_err(|panic| Failed(DispatchError::Panicked { target: Self::target(), message: crate::executor::panic_message(&*panic) }))?;
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
                // The events' ids derive from the command id: the store holding them already
                // (identical, or decided otherwise on a state that did not know) means this command
                // was handled before, past what the load scanned (a snapshot since). Nothing was
                // stored now; the kept state is dropped, it holds events the store does not.
                Ok(report) if report.duplicate_appends > 0 => return Ok(CommandOutcome::Duplicate),
                Err(EffectFailure::Store(EventStoreError::EventIdReused { .. })) => return Ok(CommandOutcome::Duplicate),
                Ok(report) => report,
                Err(f) if f.is_conflict() => {
                    tracing::debug!(attempt, "concurrency conflict, reloading");
                    continue;
                }
                Err(f) => return Err(Failed(Self::map_failure(f))),
            };
            instance.version = Version(loaded_version.0 + events.len() as u64);
            instance.causes.push(&cause);
            if self.maybe_snapshot(&stream, &instance.state, instance.version, instance.snapshot_version).await {
                instance.snapshot_version = Some(instance.version);
            }
            self.kept.keep(id, instance);
            // The reactions may dispatch to this very instance: they run after its turn.
            drop(turn);
            if reactions.is_empty() {
                return Ok(CommandOutcome::Handled { position: report.last_position });
            }
            // Behind a placeholder for the append, so that their effect positions, and the event
            // ids derived from them, are those of one run `[append, reactions...]`.
            let reactions: Vec<Effect<std::convert::Infallible>> = std::iter::once(Effect::None).chain(reactions).collect();
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
