//! [`Effect`]: a description of I/O returned by a reducer. Reducers never perform I/O; the runtime
//! executes the returned effects **in the order returned**, and stops a sequence at the first store,
//! bus or dispatch failure (so a `PublishEvent` after a failed `AppendEvents` never goes out; the
//! append's `on_error` action is fed back instead). [`Effect::Parallel`] is the explicit way to run
//! effects concurrently.
//!
//! Effects are plain data apart from their callbacks, so tests inspect them without I/O with the
//! helpers in [`crate::inspect`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::command::{AnyCommand, CommandHandler, DispatchError};
use crate::event::SerializedEvent;
use crate::event_bus::{EventBus, EventBusError};
use crate::event_store::{AppendResult, EventStore, EventStoreError, Snapshot};
use crate::stream::{ExpectedVersion, StreamId, Version};

/// A one-shot function turning an effect's result into an action fed back to the reducer.
pub type Callback<T, A> = Box<dyn FnOnce(T) -> A + Send>;

/// Identifies cancellable effects (e.g. `"search-debounce"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectId(pub String);

impl<S: Into<String>> From<S> for EffectId {
    fn from(value: S) -> Self {
        EffectId(value.into())
    }
}

/// Event store operations a reducer can request.
pub enum EventStoreOperation<A> {
    /// Appends events to a stream, checking the expected version.
    AppendEvents {
        /// The store.
        event_store: Arc<dyn EventStore>,
        /// Target stream.
        stream_id: StreamId,
        /// Optimistic concurrency check.
        expected_version: ExpectedVersion,
        /// Events, in order.
        events: Vec<SerializedEvent>,
        /// Action to feed back once stored.
        on_success: Option<Callback<AppendResult, A>>,
        /// Action to feed back if the append failed (the rest of the sequence is skipped).
        on_error: Option<Callback<EventStoreError, A>>,
    },
    /// Loads a stream's events from a version.
    LoadEvents {
        /// The store.
        event_store: Arc<dyn EventStore>,
        /// The stream.
        stream_id: StreamId,
        /// First version to read.
        from_version: Version,
        /// Action built from the events.
        on_success: Callback<Vec<SerializedEvent>, A>,
        /// Action if loading failed.
        on_error: Option<Callback<EventStoreError, A>>,
    },
    /// Saves a snapshot.
    SaveSnapshot {
        /// The store.
        event_store: Arc<dyn EventStore>,
        /// The snapshot.
        snapshot: Snapshot,
        /// Action if saving failed.
        on_error: Option<Callback<EventStoreError, A>>,
    },
    /// Loads the latest snapshot of a stream.
    LoadSnapshot {
        /// The store.
        event_store: Arc<dyn EventStore>,
        /// The stream.
        stream_id: StreamId,
        /// Action built from the snapshot (if any).
        on_success: Callback<Option<Snapshot>, A>,
        /// Action if loading failed.
        on_error: Option<Callback<EventStoreError, A>>,
    },
}

/// A description of work for the runtime. See the module docs for ordering.
pub enum Effect<A> {
    /// Nothing to do.
    None,
    /// An event store operation.
    EventStore(EventStoreOperation<A>),
    /// Publishes an event to a topic.
    PublishEvent {
        /// Concrete topic.
        topic: String,
        /// The event (normally one appended by a preceding `AppendEvents`).
        event: SerializedEvent,
        /// The bus.
        event_bus: Arc<dyn EventBus>,
        /// Action to feed back once published.
        on_success: Option<A>,
        /// Action to feed back if publishing failed (after retries).
        on_error: Option<Callback<EventBusError, A>>,
    },
    /// Sends a command to another store (how sagas drive aggregates). Completes when the target has
    /// handled it.
    DispatchCommand {
        /// Who handles it.
        target: Arc<dyn CommandHandler>,
        /// The command.
        command: AnyCommand,
        /// The business process it belongs to.
        correlation_id: Option<String>,
        /// Action to feed back if the command failed (after retries).
        on_error: Option<Callback<DispatchError, A>>,
    },
    /// Arbitrary async work that may produce an action.
    Future(BoxFuture<'static, Option<A>>),
    /// Feeds `action` back after `duration` on the store's clock.
    Delay {
        /// How long to wait.
        duration: Duration,
        /// What to send then.
        action: Box<A>,
    },
    /// Runs all effects concurrently; completes when all completed.
    Parallel(Vec<Effect<A>>),
    /// Runs effects one after another, stopping at the first failure.
    Sequential(Vec<Effect<A>>),
    /// Runs `effect` so that [`Effect::Cancel`] with the same id stops it. With `cancel_in_flight`,
    /// starting it first cancels earlier effects with this id (debounce).
    Cancellable {
        /// Cancellation id.
        id: EffectId,
        /// Cancel running effects with this id first.
        cancel_in_flight: bool,
        /// The effect.
        effect: Box<Effect<A>>,
    },
    /// Cancels running effects with this id.
    Cancel(EffectId),
}

impl<A: Send + 'static> Effect<A> {
    /// Runs a future and feeds back the action it returns, if any.
    pub fn run<F>(future: F) -> Self
    where
        F: Future<Output = Option<A>> + Send + 'static,
    {
        Effect::Future(future.boxed())
    }

    /// Feeds `action` back after `duration`.
    pub fn delay(duration: Duration, action: A) -> Self {
        Effect::Delay { duration, action: Box::new(action) }
    }

    /// Makes this effect cancellable under `id`.
    #[must_use]
    pub fn cancellable(self, id: impl Into<EffectId>, cancel_in_flight: bool) -> Self {
        Effect::Cancellable { id: id.into(), cancel_in_flight, effect: Box::new(self) }
    }

    /// Cancels running effects with `id`.
    pub fn cancel(id: impl Into<EffectId>) -> Self {
        Effect::Cancel(id.into())
    }

    /// An append with no callbacks.
    pub fn append_events(event_store: Arc<dyn EventStore>, stream_id: StreamId, expected_version: ExpectedVersion, events: Vec<SerializedEvent>) -> Self {
        Effect::EventStore(EventStoreOperation::AppendEvents { event_store, stream_id, expected_version, events, on_success: None, on_error: None })
    }

    /// A publish with no callbacks.
    pub fn publish(event_bus: Arc<dyn EventBus>, topic: impl Into<String>, event: SerializedEvent) -> Self {
        Effect::PublishEvent { topic: topic.into(), event, event_bus, on_success: None, on_error: None }
    }

    /// Dispatches `command` to `target`.
    pub fn dispatch<C: std::any::Any + Send + Sync + fmt::Debug>(target: Arc<dyn CommandHandler>, command: C, correlation_id: Option<String>) -> Self {
        Effect::DispatchCommand { target, command: AnyCommand::new(command), correlation_id, on_error: None }
    }

    /// A short name of the variant, for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::None => "none",
            Effect::EventStore(EventStoreOperation::AppendEvents { .. }) => "append_events",
            Effect::EventStore(EventStoreOperation::LoadEvents { .. }) => "load_events",
            Effect::EventStore(EventStoreOperation::SaveSnapshot { .. }) => "save_snapshot",
            Effect::EventStore(EventStoreOperation::LoadSnapshot { .. }) => "load_snapshot",
            Effect::PublishEvent { .. } => "publish_event",
            Effect::DispatchCommand { .. } => "dispatch_command",
            Effect::Future(_) => "future",
            Effect::Delay { .. } => "delay",
            Effect::Parallel(_) => "parallel",
            Effect::Sequential(_) => "sequential",
            Effect::Cancellable { .. } => "cancellable",
            Effect::Cancel(_) => "cancel",
        }
    }

    /// Lifts this effect into a parent's action type: every action it can produce goes through `f`.
    pub fn map<B: Send + 'static>(self, f: impl Fn(A) -> B + Send + Sync + 'static) -> Effect<B> {
        self.map_shared(&(Arc::new(f) as Arc<dyn Fn(A) -> B + Send + Sync>))
    }

    fn map_shared<B: Send + 'static>(self, f: &Arc<dyn Fn(A) -> B + Send + Sync>) -> Effect<B> {
        fn cb<T: 'static, A: 'static, B: 'static>(c: Option<Callback<T, A>>, f: &Arc<dyn Fn(A) -> B + Send + Sync>) -> Option<Callback<T, B>> {
            c.map(|c| {
                let f = Arc::clone(f);
                Box::new(move |t| f(c(t))) as Callback<T, B>
            })
        }
        match self {
            Effect::None => Effect::None,
            Effect::EventStore(op) => Effect::EventStore(match op {
                EventStoreOperation::AppendEvents { event_store, stream_id, expected_version, events, on_success, on_error } => {
                    EventStoreOperation::AppendEvents {
                        event_store,
                        stream_id,
                        expected_version,
                        events,
                        on_success: cb(on_success, f),
                        on_error: cb(on_error, f),
                    }
                }
                EventStoreOperation::LoadEvents { event_store, stream_id, from_version, on_success, on_error } => EventStoreOperation::LoadEvents {
                    event_store,
                    stream_id,
                    from_version,
                    on_success: cb(Some(on_success), f).expect("mapped a present callback"),
                    on_error: cb(on_error, f),
                },
                EventStoreOperation::SaveSnapshot { event_store, snapshot, on_error } => {
                    EventStoreOperation::SaveSnapshot { event_store, snapshot, on_error: cb(on_error, f) }
                }
                EventStoreOperation::LoadSnapshot { event_store, stream_id, on_success, on_error } => EventStoreOperation::LoadSnapshot {
                    event_store,
                    stream_id,
                    on_success: cb(Some(on_success), f).expect("mapped a present callback"),
                    on_error: cb(on_error, f),
                },
            }),
            Effect::PublishEvent { topic, event, event_bus, on_success, on_error } => {
                Effect::PublishEvent { topic, event, event_bus, on_success: on_success.map(|a| f(a)), on_error: cb(on_error, f) }
            }
            Effect::DispatchCommand { target, command, correlation_id, on_error } => {
                Effect::DispatchCommand { target, command, correlation_id, on_error: cb(on_error, f) }
            }
            Effect::Future(fut) => {
                let f = Arc::clone(f);
                Effect::Future(fut.map(move |a| a.map(|a| f(a))).boxed())
            }
            Effect::Delay { duration, action } => Effect::Delay { duration, action: Box::new(f(*action)) },
            Effect::Parallel(effects) => Effect::Parallel(effects.into_iter().map(|e| e.map_shared(f)).collect()),
            Effect::Sequential(effects) => Effect::Sequential(effects.into_iter().map(|e| e.map_shared(f)).collect()),
            Effect::Cancellable { id, cancel_in_flight, effect } => Effect::Cancellable { id, cancel_in_flight, effect: Box::new(effect.map_shared(f)) },
            Effect::Cancel(id) => Effect::Cancel(id),
        }
    }
}

impl<A: fmt::Debug> fmt::Debug for Effect<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::None => f.write_str("None"),
            Effect::EventStore(EventStoreOperation::AppendEvents { stream_id, expected_version, events, .. }) => f
                .debug_struct("AppendEvents")
                .field("stream_id", stream_id)
                .field("expected_version", expected_version)
                .field("event_types", &events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
                .finish_non_exhaustive(),
            Effect::EventStore(EventStoreOperation::LoadEvents { stream_id, from_version, .. }) => {
                f.debug_struct("LoadEvents").field("stream_id", stream_id).field("from_version", from_version).finish_non_exhaustive()
            }
            Effect::EventStore(EventStoreOperation::SaveSnapshot { snapshot, .. }) => {
                f.debug_struct("SaveSnapshot").field("stream_id", &snapshot.stream_id).field("version", &snapshot.version).finish_non_exhaustive()
            }
            Effect::EventStore(EventStoreOperation::LoadSnapshot { stream_id, .. }) => {
                f.debug_struct("LoadSnapshot").field("stream_id", stream_id).finish_non_exhaustive()
            }
            Effect::PublishEvent { topic, event, on_success, .. } => f
                .debug_struct("PublishEvent")
                .field("topic", topic)
                .field("event_type", &event.event_type)
                .field("event_id", &event.event_id)
                .field("on_success", on_success)
                .finish_non_exhaustive(),
            Effect::DispatchCommand { target, command, correlation_id, .. } => f
                .debug_struct("DispatchCommand")
                .field("target", &target.name())
                .field("command", command)
                .field("correlation_id", correlation_id)
                .finish_non_exhaustive(),
            Effect::Future(_) => f.write_str("Future(..)"),
            Effect::Delay { duration, action } => f.debug_struct("Delay").field("duration", duration).field("action", action).finish(),
            Effect::Parallel(e) => f.debug_tuple("Parallel").field(e).finish(),
            Effect::Sequential(e) => f.debug_tuple("Sequential").field(e).finish(),
            Effect::Cancellable { id, cancel_in_flight, effect } => {
                f.debug_struct("Cancellable").field("id", id).field("cancel_in_flight", cancel_in_flight).field("effect", effect).finish()
            }
            Effect::Cancel(id) => f.debug_tuple("Cancel").field(id).finish(),
        }
    }
}
