//! [`Store`]: holds a reducer's state, runs actions through one FIFO queue, and executes the effects
//! of each `reduce` call in order on a task of their own.
//!
//! Guarantees:
//! - actions are reduced one at a time, in the order they were queued; an action fed back by an
//!   effect is queued, never reduced re-entrantly inside another `reduce`;
//! - the effects of one `reduce` call run in the order returned ([`crate::executor`]); effects of
//!   different actions run concurrently;
//! - [`EffectHandle::finish`] waits for the effects an action started, the actions they fed back,
//!   and their effects, transitively;
//! - after [`Store::shutdown`] begins, `send` is refused, in-flight effects get a grace period to finish
//!   and are then cancelled;
//! - a reducer that panics does not wedge the store: the panic is caught, the action is reported
//!   ([`StoreError::ReducerPanicked`] to its sender, a dead letter in any case) and the store keeps
//!   serving (the state is whatever the reducer left before panicking). A panicking effect is
//!   dead-lettered by the executor;
//! - `Effect::None` costs nothing: a `reduce` returning only `None`s starts no task.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use composable_rust_core::{Effects, Reducer};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::executor::{ExecutionScope, Executor, Feedback};
use crate::tracker::{Tracker, TrackerGuard};

/// Why the store refused an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is shutting down.
    #[error("store is shutting down and takes no new actions")]
    ShuttingDown,
    /// The reducer panicked on the action; the store goes on serving the next actions.
    #[error("the reducer panicked on {action}: {message}; the store keeps serving, fix the reducer")]
    ReducerPanicked {
        /// The action, rendered with `Debug` when it implements it (else its type).
        action: String,
        /// The panic message.
        message: String,
    },
}

/// Waits for what one `send` started.
#[derive(Debug, Clone, Default)]
#[must_use = "call `finish().await` to wait for the action's effects, or drop it to let them run"]
pub struct EffectHandle {
    tracker: Option<Tracker>,
}

impl EffectHandle {
    /// Completes when the action's effects (and actions they fed back, transitively) have finished.
    pub async fn finish(self) {
        if let Some(t) = self.tracker {
            t.idle().await;
        }
    }

    /// Whether nothing started by the action is still running.
    pub fn is_finished(&self) -> bool {
        self.tracker.as_ref().is_none_or(|t| t.in_flight() == 0)
    }
}

/// An action waiting in the queue, with the handle of the `send` it belongs to.
type Pending<A> = (A, Tracker, TrackerGuard);

/// The FIFO of actions. Whoever finds it idle becomes the drainer and reduces queued actions in
/// order until it is empty; everyone else only appends and returns, so a sender never waits for
/// other senders' reduces, and no action is ever reduced inside another's `reduce`.
struct Queue<A> {
    pending: VecDeque<Pending<A>>,
    draining: bool,
}

struct Shared<R: Reducer> {
    reducer: R,
    env: R::Environment,
    queue: Mutex<Queue<R::Action>>,
    state: Mutex<R::State>,
    executor: Executor,
    all_effects: Tracker,
    closed: AtomicBool,
    cancel_all: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
}

/// A running reducer. Cheap to clone (clones share the store).
pub struct Store<R: Reducer> {
    shared: Arc<Shared<R>>,
}

impl<R: Reducer> Clone for Store<R> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<R: Reducer> fmt::Debug for Store<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("reducer", &std::any::type_name::<R>()).field("effects_in_flight", &self.shared.all_effects.in_flight()).finish()
    }
}

impl<R: Reducer> Store<R> {
    /// A store with the default executor. Must be called inside a tokio runtime (effects run on it).
    pub fn new(initial_state: R::State, reducer: R, env: R::Environment) -> Self {
        Self::with_executor(initial_state, reducer, env, Executor::default())
    }

    /// A store whose effects run on `executor` (its clock, retry policy, dead letters, observer).
    pub fn with_executor(initial_state: R::State, reducer: R, env: R::Environment, executor: Executor) -> Self {
        let (cancel_all, _) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                reducer,
                env,
                queue: Mutex::new(Queue { pending: VecDeque::new(), draining: false }),
                state: Mutex::new(initial_state),
                executor,
                all_effects: Tracker::new(),
                closed: AtomicBool::new(false),
                cancel_all,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Queues an action; reduces it (and anything queued before it) now unless another caller is
    /// already doing so. Returns a handle on the effects it starts.
    pub fn send(&self, action: R::Action) -> Result<EffectHandle, StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::ShuttingDown);
        }
        self.enqueue(action, None)
    }

    /// Reads the state.
    pub fn with_state<T>(&self, f: impl FnOnce(&R::State) -> T) -> T {
        f(&self.shared.state.lock())
    }

    /// A copy of the state.
    pub fn state(&self) -> R::State
    where
        R::State: Clone,
    {
        self.with_state(Clone::clone)
    }

    /// The executor running this store's effects (its store, bus and command router).
    pub fn executor(&self) -> &Executor {
        &self.shared.executor
    }

    /// The environment.
    pub fn environment(&self) -> &R::Environment {
        &self.shared.env
    }

    /// Effect tasks currently running.
    pub fn effects_in_flight(&self) -> usize {
        self.shared.all_effects.in_flight()
    }

    /// Waits until no effect of this store is running.
    pub async fn settled(&self) {
        self.shared.all_effects.idle().await;
    }

    /// Graceful shutdown: refuse new actions, give running effects `grace` to finish (actions they
    /// feed back are still reduced), then cancel what is left. Returns whether everything finished
    /// in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shared.closed.store(true, Ordering::Release);
        let finished = tokio::time::timeout(grace, self.settled()).await.is_ok();
        if !finished {
            tracing::warn!(in_flight = self.effects_in_flight(), "shutdown grace period over, cancelling effects");
            self.shared.cancel_all.send_replace(true);
            self.settled().await;
        }
        finished
    }

    /// `tracker`: the handle of the action that (transitively) caused this one, if any.
    fn enqueue(&self, action: R::Action, tracker: Option<Tracker>) -> Result<EffectHandle, StoreError> {
        {
            let mut queue = self.shared.queue.lock();
            if queue.draining {
                let t = tracker.unwrap_or_default();
                let guard = t.enter();
                queue.pending.push_back((action, t.clone(), guard));
                return Ok(EffectHandle { tracker: Some(t) });
            }
            queue.draining = true;
        }
        // This caller drains: its own action first (the queue was empty), then whatever others
        // queued meanwhile, in arrival order.
        let handle = match self.reduce_locked(action) {
            Ok(effects) if has_work(&effects) => {
                let t = tracker.unwrap_or_default();
                self.spawn_effects(effects, t.clone());
                Ok(EffectHandle { tracker: Some(t) })
            }
            Ok(_) => Ok(EffectHandle { tracker }),
            Err(e) => Err(e),
        };
        loop {
            let next = {
                let mut queue = self.shared.queue.lock();
                let next = queue.pending.pop_front();
                if next.is_none() {
                    queue.draining = false;
                }
                next
            };
            let Some((queued, t, guard)) = next else { break };
            // A queued action's panic has no sender waiting: reduce_locked dead-letters it.
            if let Ok(effects) = self.reduce_locked(queued) {
                if has_work(&effects) {
                    self.spawn_effects(effects, t);
                }
            }
            drop(guard);
        }
        handle
    }

    fn reduce_locked(&self, action: R::Action) -> Result<Effects<R::Action>, StoreError> {
        let mut state = self.shared.state.lock();
        let _span = tracing::trace_span!("reduce", reducer = std::any::type_name::<R>()).entered();
        let action_name = std::any::type_name::<R::Action>();
        let reduced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.shared.reducer.reduce(&mut state, action, &self.shared.env)));
        reduced.map_err(|panic| {
            let message = crate::executor::panic_message(&*panic);
            crate::dead_letter::dead_letter(&**self.shared.executor.dead_letters(), format!("reduce of a {action_name}"), message.clone(), 1, None);
            StoreError::ReducerPanicked { action: action_name.to_string(), message }
        })
    }

    fn spawn_effects(&self, effects: Effects<R::Action>, tracker: Tracker) {
        let guard = tracker.enter();
        let store_guard = self.shared.all_effects.enter();
        let mut cancelled = self.shared.cancel_all.subscribe();
        let feedback_store = self.clone();
        let feedback_tracker = tracker;
        let feedback: Feedback<R::Action> = Arc::new(move |_path, a| {
            // Actions fed back are queued with the originating action's tracker, so its
            // `finish()` also waits for them.
            let _ = feedback_store.enqueue(a, Some(feedback_tracker.clone()));
        });
        // Started here, before the task runs: the cancellable effects it starts with are
        // registered now, so a cancel reduced right after this action finds them.
        let work = self.shared.executor.start(effects.into_vec(), feedback, ExecutionScope::default());
        self.shared.runtime.spawn(async move {
            tokio::select! {
                result = work => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "effect sequence stopped");
                    }
                }
                _ = cancelled.wait_for(|c| *c) => tracing::debug!("effects cancelled by shutdown"),
            }
            drop(guard);
            drop(store_guard);
        });
    }
}

/// Whether any effect needs running (`Effect::None` alone starts no task).
fn has_work<A>(effects: &Effects<A>) -> bool {
    effects.iter().any(|e| !matches!(e, composable_rust_core::Effect::None))
}
