//! [`Effect`]: a description of I/O returned by a reducer, as plain data.
//!
//! Effects name *what* to do, never *with which handle*: the store, the bus and the command
//! handlers belong to the runtime that executes them (`composable-rust-runtime`), so two effects
//! compare with `==` (callbacks are compared by presence only) and print with `{:?}`.
//!
//! # Ordering
//! The effects of one `reduce` call form a **sequence**: the runtime runs them one after the other,
//! in the order returned, and stops at the first failed [`Effect::Append`], [`Effect::Publish`] or
//! [`Effect::Dispatch`]: that effect's `on_error` action is fed back and the rest of the sequence is
//! skipped. [`Effect::Sequential`] is a nested sequence with the same rule; [`Effect::Parallel`] runs
//! each of its children as its own sequence, concurrently, and completes when all did.
//!
//! # The outbox rule
//! An [`Append`] names the topics its events are published to ([`Append::publish_to`]). The events and
//! their publish intents are stored in **one atomic write**; from then on every event is published to
//! every named topic **at least once**, whatever happens next (a later effect failing, the process
//! dying: the outbox relay publishes what is left). An append that failed publishes nothing. The rule
//! is a property of the `Append` itself, so it holds the same at the top level and nested in
//! `Parallel`, `Sequential` or `Cancellable`. [`Effect::Publish`] is for events that are *not*
//! stored (notifications): it is retried, but lost if the process dies.
//!
//! # Identity
//! Runtimes that handle an input with an id (a command, a delivered event) derive the id of every
//! dispatched command, every appended event and every follow-up step from that id and the effect's
//! **path** in the returned tree ([`EffectPath`]), never from timing or counters, so the same input
//! handled again lands every effect once.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::command::{AnyCommand, DispatchError};
use crate::deadline::{Deadline, Due};
use crate::event::SerializedEvent;
use crate::event_bus::EventBusError;
use crate::event_store::{AppendResult, EventStoreError};
use crate::stream::{ExpectedVersion, StreamId};
use crate::topic::Topic;

/// A one-shot function turning an effect's result into an action fed back to the reducer.
pub type Callback<T, A> = Box<dyn FnOnce(T) -> A + Send>;

/// Identifies cancellable effects. Any `Hash + Eq + Debug` value converts into one
/// (`"search"`, `(Timer::Payment, order_id)`, an enum), so ids are typed at the call site.
///
/// Ids are **scoped**: a saga runner scopes them to the instance, `ForEach` to the key, so
/// `cancel("timeout")` in one instance never touches another's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectId(Arc<str>);

impl EffectId {
    /// An id from any hashable value, rendered with its type name so that `1u32` and `1u64` differ.
    pub fn of<T: Hash + Eq + fmt::Debug + 'static>(value: &T) -> Self {
        EffectId(format!("{}:{value:?}", std::any::type_name::<T>()).into())
    }

    /// This id inside `scope` (a saga instance, a `ForEach` key): ids of different scopes never match.
    #[must_use]
    pub fn scoped(&self, scope: &str) -> Self {
        // The scope's length goes first, so no scope and id can read as another pair
        // (`a` + `b/t` and `a/b` + `t` differ).
        EffectId(format!("{}:{scope}/{}", scope.len(), self.0).into())
    }

    /// The id as text (for logs).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EffectId({})", self.0)
    }
}

impl From<&str> for EffectId {
    fn from(value: &str) -> Self {
        EffectId(value.into())
    }
}

impl From<String> for EffectId {
    fn from(value: String) -> Self {
        EffectId(value.into())
    }
}

/// What starting a cancellable effect does to running effects with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CancelInFlight {
    /// Leave them running (both run).
    #[default]
    Keep,
    /// Cancel them first (debounce, "latest wins").
    Cancel,
    /// Do not start this one while one with the id runs (throttle, "first wins").
    Skip,
}

/// The position of an effect in the tree one `reduce` returned: top-level index, then the index
/// inside each enclosing `Parallel` / `Sequential` (a `Cancellable` adds `0`). Ids derived from it
/// do not depend on which effect finished first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectPath(Vec<u32>);

impl EffectPath {
    /// The root (the whole returned sequence).
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of child `index`.
    #[must_use]
    pub fn child(&self, index: usize) -> Self {
        let mut v = self.0.clone();
        v.push(u32::try_from(index).unwrap_or(u32::MAX));
        EffectPath(v)
    }

    /// The indices, outermost first.
    pub fn indices(&self) -> &[u32] {
        &self.0
    }

    /// Bytes that identify the path (for UUID v5 derivation).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|i| i.to_be_bytes()).collect()
    }
}

impl fmt::Display for EffectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/")?;
        for (k, i) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str("/")?;
            }
            write!(f, "{i}")?;
        }
        Ok(())
    }
}

/// Appends events to a stream and (atomically, through the outbox) publishes them. See the
/// module docs for the outbox rule.
pub struct Append<A> {
    /// Target stream.
    pub stream_id: StreamId,
    /// Optimistic concurrency check.
    pub expected_version: ExpectedVersion,
    /// Events, in order.
    pub events: Vec<SerializedEvent>,
    /// Topics every event of the append is published to, in this order.
    pub publish_to: Vec<Topic>,
    /// Action fed back once stored and its events published (or, if publishing failed, left to the
    /// outbox relay).
    pub on_success: Option<Callback<AppendResult, A>>,
    /// Action fed back if the append failed (the rest of the sequence is skipped).
    pub on_error: Option<Callback<EventStoreError, A>>,
}

impl<A> Append<A> {
    /// An append of `events` to `stream_id`, published nowhere yet.
    pub fn new(stream_id: StreamId, expected_version: ExpectedVersion, events: Vec<SerializedEvent>) -> Self {
        Self { stream_id, expected_version, events, publish_to: Vec::new(), on_success: None, on_error: None }
    }

    /// Also publishes every event of the append to `topic` (stored in the same write).
    #[must_use]
    pub fn publish_to(mut self, topic: Topic) -> Self {
        self.publish_to.push(topic);
        self
    }

    /// Feeds `f(result)` back once stored and published (or left to the relay).
    #[must_use]
    pub fn on_success(mut self, f: impl FnOnce(AppendResult) -> A + Send + 'static) -> Self {
        self.on_success = Some(Box::new(f));
        self
    }

    /// Feeds `f(error)` back if the append failed.
    #[must_use]
    pub fn on_error(mut self, f: impl FnOnce(EventStoreError) -> A + Send + 'static) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }
}

/// Publishes an event that is **not** stored (a notification): retried on retryable errors, but
/// lost if the process dies. Stored events are published with [`Append::publish_to`].
pub struct Publish<A> {
    /// Concrete topic.
    pub topic: Topic,
    /// The event.
    pub event: SerializedEvent,
    /// Action fed back if publishing failed (after retries).
    pub on_error: Option<Callback<EventBusError, A>>,
}

/// Sends a command to the handler the runtime registered for its type (how sagas drive
/// aggregates). Completes when the handler has handled it.
pub struct Dispatch<A> {
    /// The command.
    pub command: AnyCommand,
    /// The business process it belongs to.
    pub correlation_id: Option<String>,
    /// Action fed back if the command failed or was rejected (after retries).
    pub on_error: Option<Callback<DispatchError, A>>,
}

impl<A> Dispatch<A> {
    /// A dispatch of `command` with no callback.
    pub fn new<C: std::any::Any + Send + Sync + fmt::Debug + PartialEq>(command: C) -> Self {
        Dispatch { command: AnyCommand::new(command), correlation_id: None, on_error: None }
    }

    /// Marks the command as part of the business process `correlation_id`.
    #[must_use]
    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Feeds `f(error)` back if the command fails or is rejected (a typed rejection can be read
    /// with [`DispatchError::rejection`]).
    #[must_use]
    pub fn on_error(mut self, f: impl FnOnce(DispatchError) -> A + Send + 'static) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }
}

/// A description of work for the runtime. See the module docs for ordering, the outbox rule and
/// identity.
pub enum Effect<A> {
    /// Nothing to do. Costs nothing: no task is started for it.
    None,
    /// Appends events (and publishes them through the outbox).
    Append(Append<A>),
    /// Publishes an event that is not stored.
    Publish(Publish<A>),
    /// Sends a command to another handler.
    Dispatch(Dispatch<A>),
    /// Arbitrary async work that may produce an action. Waits on the outside world: see
    /// [`Effect::waits`].
    Run(BoxFuture<'static, Option<A>>),
    /// Feeds back every action the stream yields, in order, until it ends (TCA's `Effect.run { send
    /// in }`). Waits on the outside world, like [`Effect::Run`]; cancellable like any effect.
    Stream(futures::stream::BoxStream<'static, A>),
    /// Waits `duration` on the runtime's clock and feeds nothing back (a pause inside a sequence).
    Sleep(Duration),
    /// Feeds `action` back after `duration` on the runtime's clock.
    Delay {
        /// How long to wait.
        duration: Duration,
        /// What to send then.
        action: Box<A>,
    },
    /// Runs each child as its own sequence, concurrently; completes when all completed.
    Parallel(Vec<Effect<A>>),
    /// Runs effects one after another, stopping at the first failure.
    Sequential(Vec<Effect<A>>),
    /// Runs `effect` so that [`Effect::Cancel`] with the same (scoped) id stops it.
    Cancellable {
        /// Cancellation id.
        id: EffectId,
        /// What to do with running effects of the same id.
        in_flight: CancelInFlight,
        /// The effect.
        effect: Box<Effect<A>>,
    },
    /// Cancels running effects with this (scoped) id.
    Cancel(EffectId),
    /// Schedules a named deadline for this instance: `action` is fed back when it comes due,
    /// unless [`Effect::CancelDeadline`] names it first. A decision of the step, not work in its
    /// sequence: see [`crate::deadline`] for when it takes effect and how durable it is.
    Deadline(Deadline<A>),
    /// Cancels the deadline of this name (a no-op if none is scheduled).
    CancelDeadline(String),
}

impl<A> From<Append<A>> for Effect<A> {
    fn from(value: Append<A>) -> Self {
        Effect::Append(value)
    }
}

impl<A> From<Dispatch<A>> for Effect<A> {
    fn from(value: Dispatch<A>) -> Self {
        Effect::Dispatch(value)
    }
}

impl<A> From<Publish<A>> for Effect<A> {
    fn from(value: Publish<A>) -> Self {
        Effect::Publish(value)
    }
}

impl<A: Send + 'static> Effect<A> {
    /// Runs a future and feeds back the action it returns, if any.
    pub fn run<F>(future: F) -> Self
    where
        F: Future<Output = Option<A>> + Send + 'static,
    {
        Effect::Run(future.boxed())
    }

    /// Feeds back every action `stream` yields, in order (see [`Effect::Stream`]).
    pub fn stream<S>(stream: S) -> Self
    where
        S: futures::Stream<Item = A> + Send + 'static,
    {
        Effect::Stream(futures::StreamExt::boxed(stream))
    }

    /// Schedules the deadline `name`: `action` is fed back when `due` comes, unless the name is
    /// cancelled (or scheduled again) first. See [`crate::deadline`].
    pub fn deadline(name: impl Into<String>, due: Due, action: A) -> Self {
        Effect::Deadline(Deadline { name: name.into(), due, action })
    }

    /// Schedules the deadline `name` to come due `after` from now (see [`Effect::deadline`]).
    pub fn deadline_after(name: impl Into<String>, after: Duration, action: A) -> Self {
        Self::deadline(name, Due::After(after), action)
    }

    /// Cancels the deadline `name`: if it has not fired yet, it never will.
    pub fn cancel_deadline(name: impl Into<String>) -> Self {
        Effect::CancelDeadline(name.into())
    }

    /// Feeds `action` back after `duration`.
    pub fn delay(duration: Duration, action: A) -> Self {
        Effect::Delay { duration, action: Box::new(action) }
    }

    /// Feeds `action` back at once, unless another throttle of the same `id` did so less than
    /// `window` ago (then this one is dropped): at most one action per window, the first wins.
    pub fn throttle(id: impl Into<EffectId>, window: Duration, action: A) -> Self {
        Effect::Cancellable {
            id: id.into(),
            in_flight: CancelInFlight::Skip,
            effect: Box::new(Effect::Sequential(vec![Effect::run(async move { Some(action) }), Effect::Sleep(window)])),
        }
    }

    /// Feeds `action` back once `duration` passed without another debounce of the same `id`: each
    /// call cancels the previous one's timer (a search that runs once typing pauses).
    pub fn debounce(id: impl Into<EffectId>, duration: Duration, action: A) -> Self {
        Self::delay(duration, action).cancel_in_flight(id)
    }

    /// An append of `events` to `stream_id` (add topics with [`Append::publish_to`]).
    pub fn append(stream_id: StreamId, expected_version: ExpectedVersion, events: Vec<SerializedEvent>) -> Append<A> {
        Append::new(stream_id, expected_version, events)
    }

    /// Publishes an event that is not stored (see [`Publish`]).
    pub fn publish(topic: Topic, event: SerializedEvent) -> Self {
        Effect::Publish(Publish { topic, event, on_error: None })
    }

    /// Dispatches `command` to the handler registered for its type (for a callback, build a
    /// [`Dispatch`]).
    pub fn dispatch<C: std::any::Any + Send + Sync + fmt::Debug + PartialEq>(command: C) -> Self {
        Effect::Dispatch(Dispatch::new(command))
    }

    /// Makes this effect cancellable under `id` (running effects with that id keep running).
    #[must_use]
    pub fn cancellable(self, id: impl Into<EffectId>) -> Self {
        Effect::Cancellable { id: id.into(), in_flight: CancelInFlight::Keep, effect: Box::new(self) }
    }

    /// Makes this effect cancellable under `id`, cancelling running effects with that id first.
    #[must_use]
    pub fn cancel_in_flight(self, id: impl Into<EffectId>) -> Self {
        Effect::Cancellable { id: id.into(), in_flight: CancelInFlight::Cancel, effect: Box::new(self) }
    }

    /// Cancels running effects with `id`.
    pub fn cancel(id: impl Into<EffectId>) -> Self {
        Effect::Cancel(id.into())
    }

    /// A short name of the variant, for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::None => "none",
            Effect::Append(_) => "append",
            Effect::Publish(_) => "publish",
            Effect::Dispatch(_) => "dispatch",
            Effect::Run(_) => "run",
            Effect::Stream(_) => "stream",
            Effect::Sleep(_) => "sleep",
            Effect::Delay { .. } => "delay",
            Effect::Parallel(_) => "parallel",
            Effect::Sequential(_) => "sequential",
            Effect::Cancellable { .. } => "cancellable",
            Effect::Cancel(_) => "cancel",
            Effect::Deadline(_) => "deadline",
            Effect::CancelDeadline(_) => "cancel_deadline",
        }
    }

    /// Whether this effect (or one inside it) waits on time or on the outside world: a
    /// [`Effect::Delay`] or an [`Effect::Run`]. A saga step's acknowledgement does not wait for
    /// such effects (see the runtime's docs).
    pub fn waits(&self) -> bool {
        match self {
            Effect::Run(_) | Effect::Stream(_) | Effect::Sleep(_) | Effect::Delay { .. } => true,
            Effect::Parallel(v) | Effect::Sequential(v) => v.iter().any(Effect::waits),
            Effect::Cancellable { effect, .. } => effect.waits(),
            _ => false,
        }
    }

    /// A one-line description of what this effect is, for test failures ("delay of 30s feeding
    /// back Timeout", "dispatch Reserve { .. }").
    pub fn describe(&self) -> String
    where
        A: fmt::Debug,
    {
        match self {
            Effect::None => "nothing".into(),
            Effect::Append(a) => format!("append of {} event(s) to {}", a.events.len(), a.stream_id),
            Effect::Publish(p) => format!("publish of {} to {}", p.event.event_type, p.topic),
            Effect::Dispatch(d) => format!("dispatch of {:?}", d.command),
            Effect::Run(_) => "run (an async future)".into(),
            Effect::Stream(_) => "stream (of actions)".into(),
            Effect::Sleep(d) => format!("sleep of {d:?}"),
            Effect::Delay { duration, action } => format!("delay of {duration:?} feeding back {action:?}"),
            Effect::Parallel(v) => format!("parallel [{}]", v.iter().map(Effect::describe).collect::<Vec<_>>().join(", ")),
            Effect::Sequential(v) => format!("sequential [{}]", v.iter().map(Effect::describe).collect::<Vec<_>>().join(", ")),
            Effect::Cancellable { id, effect, .. } => format!("{} (cancellable as {})", effect.describe(), id.as_str()),
            Effect::Cancel(id) => format!("cancel of {}", id.as_str()),
            Effect::Deadline(d) => format!("deadline {} ({:?}) feeding back {:?}", d.name, d.due, d.action),
            Effect::CancelDeadline(name) => format!("cancel of deadline {name}"),
        }
    }

    /// Lifts this effect into a parent's action type: every action it can produce goes through `f`.
    pub fn map<B: Send + 'static>(self, f: impl Fn(A) -> B + Send + Sync + 'static) -> Effect<B> {
        self.map_shared(&(Arc::new(f) as Arc<dyn Fn(A) -> B + Send + Sync>), None)
    }

    /// Like [`Effect::map`], and also scopes every cancellation id under `scope`, so that two
    /// children's effects never cancel each other (used by composition).
    pub fn map_scoped<B: Send + 'static>(self, scope: &str, f: impl Fn(A) -> B + Send + Sync + 'static) -> Effect<B> {
        self.map_shared(&(Arc::new(f) as Arc<dyn Fn(A) -> B + Send + Sync>), Some(scope))
    }

    fn map_shared<B: Send + 'static>(self, f: &Arc<dyn Fn(A) -> B + Send + Sync>, scope: Option<&str>) -> Effect<B> {
        fn cb<T: 'static, A: 'static, B: 'static>(c: Option<Callback<T, A>>, f: &Arc<dyn Fn(A) -> B + Send + Sync>) -> Option<Callback<T, B>> {
            c.map(|c| {
                let f = Arc::clone(f);
                Box::new(move |t| f(c(t))) as Callback<T, B>
            })
        }
        let rescope = |id: EffectId| match scope {
            Some(s) => id.scoped(s),
            None => id,
        };
        let rename = |name: String| match scope {
            Some(s) => crate::deadline::scoped_name(s, &name),
            None => name,
        };
        match self {
            Effect::None => Effect::None,
            Effect::Append(a) => Effect::Append(Append {
                stream_id: a.stream_id,
                expected_version: a.expected_version,
                events: a.events,
                publish_to: a.publish_to,
                on_success: cb(a.on_success, f),
                on_error: cb(a.on_error, f),
            }),
            Effect::Publish(p) => Effect::Publish(Publish { topic: p.topic, event: p.event, on_error: cb(p.on_error, f) }),
            Effect::Dispatch(d) => Effect::Dispatch(Dispatch { command: d.command, correlation_id: d.correlation_id, on_error: cb(d.on_error, f) }),
            Effect::Run(fut) => {
                let f = Arc::clone(f);
                Effect::Run(fut.map(move |a| a.map(|a| f(a))).boxed())
            }
            Effect::Stream(stream) => {
                let f = Arc::clone(f);
                Effect::Stream(futures::StreamExt::boxed(futures::StreamExt::map(stream, move |a| f(a))))
            }
            Effect::Sleep(d) => Effect::Sleep(d),
            Effect::Delay { duration, action } => Effect::Delay { duration, action: Box::new(f(*action)) },
            Effect::Parallel(effects) => Effect::Parallel(effects.into_iter().map(|e| e.map_shared(f, scope)).collect()),
            Effect::Sequential(effects) => Effect::Sequential(effects.into_iter().map(|e| e.map_shared(f, scope)).collect()),
            Effect::Cancellable { id, in_flight, effect } => Effect::Cancellable { id: rescope(id), in_flight, effect: Box::new(effect.map_shared(f, scope)) },
            Effect::Cancel(id) => Effect::Cancel(rescope(id)),
            Effect::Deadline(d) => Effect::Deadline(Deadline { name: rename(d.name), due: d.due, action: f(d.action) }),
            Effect::CancelDeadline(name) => Effect::CancelDeadline(rename(name)),
        }
    }
}

fn same_presence<T>(a: Option<&T>, b: Option<&T>) -> bool {
    a.is_some() == b.is_some()
}

/// Effects compare as data: callbacks by presence, [`Effect::Run`] futures and [`Effect::Stream`]s
/// never equal.
impl<A: PartialEq> PartialEq for Effect<A> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Effect::None, Effect::None) => true,
            (Effect::Append(a), Effect::Append(b)) => {
                a.stream_id == b.stream_id
                    && a.expected_version == b.expected_version
                    && a.events.len() == b.events.len()
                    && a.events.iter().zip(&b.events).all(|(x, y)| x.event_type == y.event_type && x.data == y.data)
                    && a.publish_to == b.publish_to
                    && same_presence(a.on_success.as_ref(), b.on_success.as_ref())
                    && same_presence(a.on_error.as_ref(), b.on_error.as_ref())
            }
            (Effect::Publish(a), Effect::Publish(b)) => {
                a.topic == b.topic
                    && a.event.event_type == b.event.event_type
                    && a.event.data == b.event.data
                    && same_presence(a.on_error.as_ref(), b.on_error.as_ref())
            }
            (Effect::Dispatch(a), Effect::Dispatch(b)) => {
                a.command == b.command && a.correlation_id == b.correlation_id && same_presence(a.on_error.as_ref(), b.on_error.as_ref())
            }
            (Effect::Delay { duration: d1, action: a1 }, Effect::Delay { duration: d2, action: a2 }) => d1 == d2 && a1 == a2,
            (Effect::Sleep(a), Effect::Sleep(b)) => a == b,
            (Effect::Parallel(a), Effect::Parallel(b)) | (Effect::Sequential(a), Effect::Sequential(b)) => a == b,
            (Effect::Cancellable { id: i1, in_flight: f1, effect: e1 }, Effect::Cancellable { id: i2, in_flight: f2, effect: e2 }) => {
                i1 == i2 && f1 == f2 && e1 == e2
            }
            (Effect::Cancel(a), Effect::Cancel(b)) => a == b,
            (Effect::Deadline(a), Effect::Deadline(b)) => a == b,
            (Effect::CancelDeadline(a), Effect::CancelDeadline(b)) => a == b,
            _ => false,
        }
    }
}

impl<A: fmt::Debug> fmt::Debug for Effect<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CALLBACK: &str = "<callback>";
        let cb = |present: bool| if present { Some(CALLBACK) } else { None };
        match self {
            Effect::None => f.write_str("None"),
            Effect::Append(a) => f
                .debug_struct("Append")
                .field("stream_id", &a.stream_id)
                .field("expected_version", &a.expected_version)
                .field("event_types", &a.events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
                .field("publish_to", &a.publish_to)
                .field("on_success", &cb(a.on_success.is_some()))
                .field("on_error", &cb(a.on_error.is_some()))
                .finish(),
            Effect::Publish(p) => f
                .debug_struct("Publish")
                .field("topic", &p.topic)
                .field("event_type", &p.event.event_type)
                .field("on_error", &cb(p.on_error.is_some()))
                .finish(),
            Effect::Dispatch(d) => f
                .debug_struct("Dispatch")
                .field("command", &d.command)
                .field("correlation_id", &d.correlation_id)
                .field("on_error", &cb(d.on_error.is_some()))
                .finish(),
            Effect::Run(_) => f.write_str("Run(..)"),
            Effect::Stream(_) => f.write_str("Stream(..)"),
            Effect::Sleep(d) => f.debug_tuple("Sleep").field(d).finish(),
            Effect::Delay { duration, action } => f.debug_struct("Delay").field("duration", duration).field("action", action).finish(),
            Effect::Parallel(e) => f.debug_tuple("Parallel").field(e).finish(),
            Effect::Sequential(e) => f.debug_tuple("Sequential").field(e).finish(),
            Effect::Cancellable { id, in_flight, effect } => {
                f.debug_struct("Cancellable").field("id", id).field("in_flight", in_flight).field("effect", effect).finish()
            }
            Effect::Cancel(id) => f.debug_tuple("Cancel").field(id).finish(),
            Effect::Deadline(d) => f.debug_tuple("Deadline").field(d).finish(),
            Effect::CancelDeadline(name) => f.debug_tuple("CancelDeadline").field(name).finish(),
        }
    }
}
